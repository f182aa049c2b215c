//! A scripted RIS for tests that drive the daemon: an MLLP listener on loopback that
//! records every message and answers each with an ACK chosen by the test.

use super::{run, Daemon};
use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chooses the ACK payload for the `n`-th message received (1-based) with control id `id`;
/// an empty one closes the connection without answering (a RIS whose parser fails on it).
pub type Answer = Arc<dyn Fn(usize, &str) -> String + Send + Sync>;

/// MSH-10 of an HL7 message (as sent: not unescaped), or "".
pub fn control_id(msg: &str) -> String {
    msg.split('\r')
        .next()
        .and_then(|msh| msh.split('|').nth(9))
        .unwrap_or("")
        .to_string()
}

/// A plain `AA` for the message with control id `id`.
pub fn aa(id: &str) -> String {
    format!(
        "MSH|^~\\&|RIS|HOSPITAL|DULI|demo-site|20261123000000||ACK^R01^ACK|A{id}|P|2.5.1\rMSA|AA|{id}\r"
    )
}

/// An `AR` for the message with control id `id`, with the RIS's own words `text` (MSA-3).
pub fn ar(id: &str, text: &str) -> String {
    format!(
        "MSH|^~\\&|RIS|HOSPITAL|DULI|demo-site|20261123000000||ACK^R01^ACK|A{id}|P|2.5.1\rMSA|AR|{id}|{text}\r"
    )
}

/// Starts the listener on a free port: each message is recorded, then answered with
/// `answer` after `delay`. Returns its port and the messages received so far.
pub fn scripted_ris(answer: Answer, delay: Duration) -> (u16, Arc<Mutex<Vec<String>>>) {
    scripted_ris_at(0, answer, delay)
}

/// [`scripted_ris`] on `port` (one the daemon was already told).
pub fn scripted_ris_at(
    port: u16,
    answer: Answer,
    delay: Duration,
) -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind(("127.0.0.1", port)).unwrap();
    let port = listener.local_addr().unwrap().port();
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let (store, answer) = (store.clone(), answer.clone());
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    let n = match conn.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    buf.extend_from_slice(&chunk[..n]);
                    while let Some(end) = buf.windows(2).position(|w| w == [0x1c, 0x0d]) {
                        let frame: Vec<u8> = buf.drain(..end + 2).collect();
                        let start = frame.iter().position(|b| *b == 0x0b).map_or(0, |i| i + 1);
                        let msg = String::from_utf8_lossy(&frame[start..end]).to_string();
                        let id = control_id(&msg);
                        let n = {
                            let mut store = store.lock().unwrap();
                            store.push(msg);
                            store.len()
                        };
                        std::thread::sleep(delay);
                        let ack = answer(n, &id);
                        if ack.is_empty() {
                            return;
                        }
                        let mut reply = vec![0x0b];
                        reply.extend_from_slice(ack.as_bytes());
                        reply.extend_from_slice(&[0x1c, 0x0d]);
                        if conn.write_all(&reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (port, got)
}

/// Waits until the daemon's outbox is empty (every message acknowledged).
pub fn wait_drained(d: &Daemon, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let out = run(&mut d.command(&["outbox", "list"]), Duration::from_secs(30));
        if out.stdout.lines().count() == 1 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "outbox not drained:\n{}",
            out.stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// What hl7apy says of `msg` at its STRICT level against the HL7 v2.5.1 ORU_R01 structure
/// (groups, segments, fields, data types, lengths): "valid" or the validator's error;
/// `None` with a SKIP line when no Python has hl7apy (a failure under `make test`). A
/// validator that cannot run or says nothing fails the test.
pub fn hl7_strict(msg: &str) -> Option<String> {
    hl7_strict_all(&[msg.to_string()]).map(|mut v| v.remove(0))
}

/// Asserts that hl7apy STRICT finds each of `msgs` valid (nothing asserted, with a SKIP
/// line, when no Python has hl7apy: a failure under `make test`).
pub fn assert_strict_valid(msgs: &[String]) {
    let Some(verdicts) = hl7_strict_all(msgs) else {
        return;
    };
    for (msg, verdict) in msgs.iter().zip(&verdicts) {
        assert_eq!(verdict, "valid", "{}", msg.replace('\r', "\n"));
    }
}

/// [`hl7_strict`] of each of `msgs`, in one validator process: one verdict per message.
pub fn hl7_strict_all(msgs: &[String]) -> Option<Vec<String>> {
    if msgs.is_empty() {
        return Some(Vec::new());
    }
    let python = super::python_with(&["hl7apy"])?;
    // Messages are separated by FS (0x1C), which HL7 text never holds (MLLP ends a frame
    // with it).
    let script = r#"
import sys
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message
from hl7apy.validation import Validator
import re, tempfile
OPEN_TABLE = re.compile(r"Warning: Value (SCT|99[A-Z0-9]{1,4}) not in table HL70396 in element \S+")
for text in sys.stdin.read().split("\x1c"):
    try:
        m = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
        with tempfile.NamedTemporaryFile("r") as report:
            Validator.validate(m, reference=None, report_file=report.name)
            warnings = [w.strip() for w in report if w.startswith("Warning")]
        # Table 0396 is user-extendable and kept by HL7 apart from the versions: hl7apy's
        # copy for 2.5.1 predates SCT (SNOMED CT) and lists "99zzz" (a local scheme) as
        # a pattern it cannot match. Every other warning (a length, a table) counts.
        warnings = [w for w in warnings if not OPEN_TABLE.fullmatch(w)]
        print("valid" if not warnings else " ".join(warnings))
    except Exception as e:
        print(f"{type(e).__name__}: {e}".replace("\n", " "))
"#;
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the hl7apy validator");
    child
        .stdin
        .take()
        .expect("validator stdin")
        .write_all(msgs.join("\x1c").as_bytes())
        .expect("messages to the hl7apy validator");
    let out = child.wait_with_output().expect("hl7apy validator output");
    let verdicts: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_string())
        .collect();
    assert_eq!(
        verdicts.len(),
        msgs.len(),
        "the hl7apy validator gave {} verdict(s) for {} message(s): {verdicts:?}",
        verdicts.len(),
        msgs.len()
    );
    Some(verdicts)
}
