//! `duli provision --check`: connectivity tests a technician can read over the phone —
//! C-ECHO to this box's SCP and to each PACS destination, an MLLP connection to the RIS,
//! an MQTT CONNECT to the broker (TLS with the client certificate when configured), and
//! the clock's synchronisation.

use crate::config::Config;
use crate::scu;
use std::path::Path;

use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// The result of one test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Works.
    Pass,
    /// Does not work: the box is not ready.
    Fail,
    /// Could not be determined here; look at it.
    Warn,
    /// Not configured.
    Skip,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Warn => "WARN",
            Outcome::Skip => "SKIP",
        })
    }
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// What is tested.
    pub check: String,
    /// Against what.
    pub target: String,
    /// The outcome.
    pub outcome: Outcome,
    /// Round trip or reason.
    pub detail: String,
}

fn line(check: &str, target: String, outcome: Outcome, detail: String) -> Line {
    Line {
        check: check.to_string(),
        target,
        outcome,
        detail,
    }
}

/// Whether every test passed or was skipped/warned (no FAIL).
pub fn all_passed(lines: &[Line]) -> bool {
    lines.iter().all(|l| l.outcome != Outcome::Fail)
}

/// The table as plain text, one numbered row per test.
pub fn render(lines: &[Line]) -> String {
    let w_check = lines
        .iter()
        .map(|l| l.check.len())
        .max()
        .unwrap_or(5)
        .max(5);
    let w_target = lines
        .iter()
        .map(|l| l.target.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let mut out = format!(
        "#  {:<w_check$}  {:<w_target$}  RESULT  DETAIL\n",
        "CHECK", "TARGET"
    );
    for (i, l) in lines.iter().enumerate() {
        out.push_str(&format!(
            "{:<2} {:<w_check$}  {:<w_target$}  {:<6}  {}\n",
            i + 1,
            l.check,
            l.target,
            l.outcome.to_string(),
            l.detail
        ));
    }
    let failed = lines.iter().filter(|l| l.outcome == Outcome::Fail).count();
    out.push_str(&if failed == 0 {
        "all checks passed\n".to_string()
    } else {
        format!("{failed} check(s) FAILED\n")
    });
    out
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// Runs every test, each bounded by `timeout`.
pub async fn run(cfg: &Config, timeout: Duration) -> Vec<Line> {
    let mut lines = Vec::new();
    let echoes = scu::configured_peers(cfg).into_iter().map(|p| {
        let name = if p.own {
            "DICOM echo (this box)".to_string()
        } else {
            format!("DICOM echo {}", p.name)
        };
        (name, p.target)
    });
    for (name, target) in echoes {
        let shown = format!("{}@{}:{}", target.ae_title, target.host, target.port);
        let r = tokio::time::timeout(timeout, scu::echo(&target, &cfg.dicom.ae_title)).await;
        lines.push(match r {
            Ok(Ok(rtt)) => line(
                &name,
                shown,
                Outcome::Pass,
                format!("Success in {}", ms(rtt)),
            ),
            Ok(Err(e)) => line(&name, shown, Outcome::Fail, e.to_string()),
            Err(_) => line(&name, shown, Outcome::Fail, "no answer in time".into()),
        });
    }

    for d in cfg
        .pacs
        .destinations
        .iter()
        .filter(|d| d.storage_commitment)
    {
        let target = scu::Target::of(d);
        let shown = target.to_string();
        let name = format!("DICOM Storage Commitment {}", d.name);
        let asked = scu::accepts(
            &target,
            &cfg.dicom.ae_title,
            crate::dimse::uids::STORAGE_COMMITMENT_PUSH_MODEL,
        );
        lines.push(match tokio::time::timeout(timeout, asked).await {
            Ok(Ok(true)) => line(&name, shown, Outcome::Pass, "context accepted".into()),
            Ok(Ok(false)) => line(
                &name,
                shown,
                Outcome::Fail,
                format!(
                    "the PACS does not accept Storage Commitment Push Model from AE {}",
                    cfg.dicom.ae_title
                ),
            ),
            Ok(Err(e)) => line(&name, shown, Outcome::Fail, e.to_string()),
            Err(_) => line(&name, shown, Outcome::Fail, "no answer in time".into()),
        });
    }

    let hl7 = &cfg.hl7;
    let shown = format!("{}:{}", hl7.host, hl7.port);
    lines.push(if !hl7.enabled {
        line(
            "HL7 MLLP",
            shown,
            Outcome::Skip,
            "hl7.enabled = false".into(),
        )
    } else {
        match tokio::time::timeout(
            timeout,
            connect(
                &hl7.host,
                hl7.port,
                hl7.tls,
                hl7.ca.as_deref(),
                hl7.cert.as_deref(),
                hl7.key.as_deref(),
            ),
        )
        .await
        {
            Ok(Ok((_, rtt))) => line(
                "HL7 MLLP",
                shown,
                Outcome::Pass,
                format!(
                    "{}connected in {}",
                    if hl7.tls { "TLS " } else { "" },
                    ms(rtt)
                ),
            ),
            Ok(Err(e)) => line("HL7 MLLP", shown, Outcome::Fail, e.to_string()),
            Err(_) => line("HL7 MLLP", shown, Outcome::Fail, "no answer in time".into()),
        }
    });

    let mqtt = &cfg.mqtt;
    let shown = format!("{}:{}", mqtt.host, mqtt.port);
    lines.push(if !mqtt.enabled {
        line(
            "MQTT connect",
            shown,
            Outcome::Skip,
            "mqtt.enabled = false".into(),
        )
    } else {
        let client_id = format!("{}-check", cfg.mqtt_client_id());
        match tokio::time::timeout(timeout, mqtt_connect(cfg, &client_id)).await {
            Ok(Ok(detail)) => line("MQTT connect", shown, Outcome::Pass, detail),
            Ok(Err(e)) => line("MQTT connect", shown, Outcome::Fail, e.to_string()),
            Err(_) => line(
                "MQTT connect",
                shown,
                Outcome::Fail,
                "no answer in time".into(),
            ),
        }
    });

    let (outcome, target, detail) = clock_sync();
    lines.push(line("clock sync", target, outcome, detail));
    lines
}

/// Any stream the checks speak over.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// Why a peer of the checks did not answer as it should.
#[derive(Debug, thiserror::Error)]
enum Unreachable {
    /// The TCP connection failed.
    #[error("TCP: {0}")]
    Tcp(std::io::Error),
    /// TLS is on but no CA is configured.
    #[error("TLS: no CA configured to check the server against")]
    NoCa,
    /// The client's TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(crate::tls::TlsError),
    /// The TLS handshake did not give a connection.
    #[error(transparent)]
    Handshake(crate::tls::HandshakeError),
    /// The MQTT CONNECT could not be sent.
    #[error("sending CONNECT: {0}")]
    SendConnect(std::io::Error),
    /// No MQTT CONNACK came back.
    #[error("no CONNACK: {0}")]
    NoConnack(std::io::Error),
    /// The answer is not an MQTT CONNACK.
    #[error("not an MQTT CONNACK: {0:02x?}")]
    NotConnack([u8; 4]),
    /// The broker refused the connection with this return code.
    #[error("refused: {}", refusal(*.0))]
    Refused(u8),
}

/// The meaning of a CONNACK return code.
fn refusal(code: u8) -> String {
    match code {
        1 => "protocol version".into(),
        2 => "client id".into(),
        3 => "broker unavailable".into(),
        4 => "bad user name or password".into(),
        5 => "not authorised (client certificate?)".into(),
        n => format!("code {n}"),
    }
}

/// Longest TLS handshake of a check (each check also runs under its own time limit).
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(30);

/// TCP connect, then a TLS handshake when `tls`; returns the stream and the time taken.
async fn connect(
    host: &str,
    port: u16,
    tls: bool,
    ca: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
) -> Result<(Box<dyn Stream>, Duration), Unreachable> {
    let started = Instant::now();
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(Unreachable::Tcp)?;
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok((Box::new(tcp), started.elapsed()));
    }
    let ca = ca.ok_or(Unreachable::NoCa)?;
    let config =
        crate::tls::client_config("provision", Some(ca), cert, key).map_err(Unreachable::Tls)?;
    let stream = crate::tls::connect(config, host, tcp, HANDSHAKE_LIMIT)
        .await
        .map_err(Unreachable::Handshake)?;
    Ok((Box::new(stream), started.elapsed()))
}

/// The MQTT 3.1.1 CONNECT packet of a clean session with `client_id`.
fn connect_packet(client_id: &str) -> Vec<u8> {
    let id = client_id.as_bytes();
    let mut body = vec![0x00, 0x04, b'M', b'Q', b'T', b'T', 0x04, 0x02, 0x00, 0x1e];
    body.extend_from_slice(&(id.len() as u16).to_be_bytes());
    body.extend_from_slice(id);
    let mut packet = vec![0x10];
    let mut len = body.len();
    loop {
        let mut byte = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        packet.push(byte);
        if len == 0 {
            break;
        }
    }
    packet.extend_from_slice(&body);
    packet
}

/// An MQTT CONNECT to the configured broker; the detail of the check when accepted.
async fn mqtt_connect(cfg: &Config, client_id: &str) -> Result<String, Unreachable> {
    let m = &cfg.mqtt;
    let (mut stream, _) = connect(
        &m.host,
        m.port,
        m.tls,
        m.ca.as_deref(),
        m.cert.as_deref(),
        m.key.as_deref(),
    )
    .await?;
    let started = Instant::now();
    stream
        .write_all(&connect_packet(client_id))
        .await
        .map_err(Unreachable::SendConnect)?;
    let mut ack = [0u8; 4];
    stream
        .read_exact(&mut ack)
        .await
        .map_err(Unreachable::NoConnack)?;
    let rtt = started.elapsed();
    let _ = stream.write_all(&[0xe0, 0x00]).await;
    let _ = stream.shutdown().await;
    if ack[0] != 0x20 || ack[1] != 0x02 {
        return Err(Unreachable::NotConnack(ack));
    }
    match ack[3] {
        0 => Ok(format!(
            "{}CONNACK accepted in {}",
            if m.tls { "TLS " } else { "" },
            ms(rtt)
        )),
        n => Err(Unreachable::Refused(n)),
    }
}

/// Clock synchronisation from `timedatectl`, else `chronyc`; WARN when neither answers.
fn clock_sync() -> (Outcome, String, String) {
    let run = |cmd: &str, args: &[&str]| {
        std::process::Command::new(cmd)
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
    };
    if let Some(out) = run(
        "timedatectl",
        &[
            "show",
            "--property=NTPSynchronized",
            "--property=NTP",
            "--property=Timezone",
        ],
    ) {
        let get = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(&format!("{k}=")))
                .unwrap_or("?")
                .to_string()
        };
        let detail = format!(
            "synchronised={} ntp={} timezone={}",
            get("NTPSynchronized"),
            get("NTP"),
            get("Timezone")
        );
        let outcome = if get("NTPSynchronized") == "yes" {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        return (outcome, "timedatectl".into(), detail);
    }
    if let Some(out) = run("chronyc", &["-n", "tracking"]) {
        let leap = out
            .lines()
            .find_map(|l| l.strip_prefix("Leap status"))
            .map(|s| s.trim_start_matches([' ', ':']).trim().to_string())
            .unwrap_or_default();
        let outcome = if leap == "Normal" {
            Outcome::Pass
        } else {
            Outcome::Fail
        };
        return (outcome, "chronyc".into(), format!("leap status {leap}"));
    }
    (
        Outcome::Warn,
        "timedatectl/chronyc".into(),
        "cannot determine (no systemd-timedated or chronyd answering); check the clock by hand"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_packet_is_mqtt_311() {
        let p = connect_packet("duli-x");
        assert_eq!(p[0], 0x10);
        assert_eq!(p[1] as usize, p.len() - 2);
        assert_eq!(&p[2..8], b"\x00\x04MQTT");
        assert_eq!(&p[p.len() - 6..], b"duli-x");
        let long = connect_packet(&"x".repeat(200));
        assert_eq!(long[1] & 0x80, 0x80, "two-byte remaining length");
    }

    #[test]
    fn table_counts_failures() {
        let lines = vec![
            line("a", "t".into(), Outcome::Pass, "ok".into()),
            line("b", "t".into(), Outcome::Fail, "refused".into()),
            line("c", "t".into(), Outcome::Skip, "off".into()),
        ];
        assert!(!all_passed(&lines));
        let text = render(&lines);
        assert!(text.contains("1 check(s) FAILED"), "{text}");
        assert!(all_passed(&lines[..1]));
    }
}
