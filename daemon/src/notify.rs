//! systemd readiness and watchdog notifications (`sd_notify`) over `NOTIFY_SOCKET`.
//! Without the variable (not under systemd) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends one notification line (e.g. `READY=1`). Errors are logged, never fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let Ok(sock) = UnixDatagram::unbound() else {
        return;
    };
    let bytes = path.as_encoded_bytes();
    let result = if let Some(abstract_name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        std::os::unix::net::SocketAddr::from_abstract_name(abstract_name)
            .and_then(|addr| sock.send_to_addr(state.as_bytes(), &addr))
    } else {
        sock.send_to(state.as_bytes(), &path)
    };
    if let Err(e) = result {
        log::warn!("sd_notify {state:?} failed: {e}");
    }
}

/// Asks systemd for more start-up time (`EXTEND_TIMEOUT_USEC`, three periods each time)
/// at each `period` in which a long start-up step (an index rebuild) made progress: the
/// step is not cut off by the unit's `TimeoutStartSec` while it advances, and a start that
/// hangs still is, since a step that stops advancing stops asking.
#[derive(Debug)]
pub struct ExtendStart {
    stop: Option<std::sync::mpsc::Sender<()>>,
}

impl ExtendStart {
    /// Starts watching `progress` (a count the step raises as it goes) on a thread of its
    /// own; nothing when not under systemd.
    pub fn while_advancing(
        period: Duration,
        progress: std::sync::Arc<std::sync::atomic::AtomicU64>,
    ) -> ExtendStart {
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            return ExtendStart { stop: None };
        }
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let line = format!("EXTEND_TIMEOUT_USEC={}", (period * 3).as_micros());
        let spawned = std::thread::Builder::new()
            .name("extend-start".into())
            .spawn(move || {
                let mut seen = progress.load(std::sync::atomic::Ordering::Relaxed);
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    let now = progress.load(std::sync::atomic::Ordering::Relaxed);
                    if now != seen {
                        notify(&line);
                        seen = now;
                    }
                }
            });
        if let Err(e) = spawned {
            log::warn!("cannot ask systemd for more start-up time: {e}");
        }
        ExtendStart { stop: Some(stop) }
    }
}

impl Drop for ExtendStart {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The watchdog interval systemd asked for (`WATCHDOG_USEC`), halved as systemd advises.
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    Some(Duration::from_micros(usec / 2))
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The variable is process-wide; this is the only test that sets it.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::notify("READY=1");
        // More start-up time is asked for while the step advances, not while it stalls,
        // and no more after.
        let progress = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let extending = super::ExtendStart::while_advancing(
            std::time::Duration::from_millis(50),
            progress.clone(),
        );
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        listener
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        assert!(listener.recv(&mut buf).is_err(), "asked while stalled");
        for step in 1..=2 {
            progress.store(step, std::sync::atomic::Ordering::Relaxed);
            let n = listener.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], b"EXTEND_TIMEOUT_USEC=150000");
        }
        drop(extending);
        std::env::remove_var("NOTIFY_SOCKET");
        std::thread::sleep(std::time::Duration::from_millis(120));
        while listener
            .set_nonblocking(true)
            .and_then(|()| listener.recv(&mut buf))
            .is_ok()
        {}
        std::thread::sleep(std::time::Duration::from_millis(150));
        assert!(
            listener.recv(&mut buf).is_err(),
            "asked again after the drop"
        );
    }
}
