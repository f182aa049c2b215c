//! Checks of the test harness itself against the real peers (Orthanc, Mosquitto,
//! DCMTK, pynetdicom), without the daemon. When a peer is absent the test prints
//! a SKIP line and passes.

mod common;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::process::Command;
use std::thread;
use std::time::Duration;

use common::*;

#[test]
fn free_ports_are_distinct_and_bindable() {
    let ports = free_ports(8);
    let mut sorted = ports.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 8, "{ports:?}");
    for port in ports {
        TcpListener::bind(loopback(port)).expect("a handed-out port can be bound");
    }
    assert!(!free_ports(3).contains(&free_port()));
}

#[test]
fn http_client_reads_content_length_and_chunked_bodies() {
    let listener = TcpListener::bind(loopback(0)).unwrap();
    let addr = listener.local_addr().unwrap();
    let server = thread::spawn(move || {
        let replies: [&[u8]; 2] = [
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Test: a\r\n\r\nhello",
            b"HTTP/1.1 503 Service Unavailable\r\nTransfer-Encoding: chunked\r\n\r\n\
              4\r\nduli\r\n6;ext=1\r\n edge!\r\n0\r\n\r\n",
        ];
        for reply in replies {
            let (mut stream, _) = listener.accept().unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0, "client closed early");
                request.extend_from_slice(&buf[..n]);
            }
            let text = String::from_utf8(request).unwrap();
            assert!(text.starts_with("GET /healthz HTTP/1.1\r\n"), "{text}");
            stream.write_all(reply).unwrap();
        }
    });
    let first = http_get(addr, "/healthz").unwrap();
    assert_eq!(first.status, 200);
    assert_eq!(first.text(), "hello");
    assert_eq!(first.headers.get("x-test").map(String::as_str), Some("a"));
    let second = http_get(addr, "/healthz").unwrap();
    assert_eq!(second.status, 503);
    assert_eq!(second.text(), "duli edge!");
    server.join().unwrap();
}

#[test]
fn prometheus_parser_finds_exact_series() {
    let text = "# HELP duli_store_instances x\n# TYPE duli_store_instances gauge\n\
                duli_store_instances 42\n\
                duli_studies{state=\"complete\"} 3\n\
                duli_studies{state=\"receiving\"} 0\n\
                duli_store_seconds_bucket{le=\"0.1\"} 7\n";
    assert_eq!(prometheus_value(text, "duli_store_instances"), Some(42.0));
    assert_eq!(
        prometheus_value(text, "duli_studies{state=\"complete\"}"),
        Some(3.0)
    );
    assert_eq!(prometheus_value(text, "duli_studies"), None);
    assert_eq!(prometheus_value(text, "duli_missing"), None);
}

#[test]
fn tool_runner_captures_status_output_and_timeout() {
    let out = run(
        Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
        TOOL_TIMEOUT,
    );
    assert_eq!(out.code(), Some(3));
    assert_eq!(out.stdout, "out\n");
    assert_eq!(out.stderr, "err\n");
    let slow = run(Command::new("sleep").arg("30"), Duration::from_millis(200));
    assert!(slow.timed_out && !slow.success());
}

#[test]
fn dcmtk_tools_get_tcp_nodelay() {
    let Some(cmd) = dcmtk("echoscu") else { return };
    let nodelay = cmd
        .get_envs()
        .find(|(k, _)| *k == "TCP_NODELAY")
        .and_then(|(_, v)| v);
    assert_eq!(nodelay.and_then(|v| v.to_str()), Some("1"));
}

#[test]
fn shared_samples_are_located() {
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    assert_eq!(files.len(), 16, "{files:?}");
    for file in &files {
        let bytes = read(file);
        assert_eq!(&bytes[128..132], b"DICM", "{} is Part 10", file.display());
    }
}

#[test]
fn orthanc_starts_on_loopback_and_answers_rest_and_echo() {
    let Some(orthanc) = Orthanc::builder()
        .aet("TESTPACS")
        .modality("duli", "DULI", "127.0.0.1", 11112)
        .start()
    else {
        return;
    };
    let system = orthanc.get_json("/system");
    assert_eq!(system["DicomAet"], "TESTPACS");
    assert_eq!(system["DicomPort"], orthanc.dicom_port);
    assert_eq!(system["HttpPort"], orthanc.http_port);
    let modalities = orthanc.get_json("/modalities");
    assert_eq!(modalities, serde_json::json!(["duli"]));
    assert!(orthanc.instances().is_empty());

    if let Some(echo) = echoscu("ECHOSCU", "TESTPACS", orthanc.dicom_port, &[]) {
        echo.assert_success("echoscu to Orthanc");
    }
}

#[test]
fn storescu_sends_a_sample_into_orthanc() {
    let Some(files) = sample_dicoms("explicit-le") else {
        return;
    };
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let Some(out) = storescu(
        "STORESCU",
        &orthanc.aet,
        orthanc.dicom_port,
        &[],
        &files[..2],
    ) else {
        return;
    };
    out.assert_success("storescu to Orthanc");
    assert_eq!(orthanc.instances().len(), 2);
    let stats = orthanc.get_json("/statistics");
    assert_eq!(stats["CountInstances"], 2);
}

#[test]
fn pynetdicom_echoes_orthanc() {
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let script = r#"
import sys
from pynetdicom import AE
from pynetdicom.sop_class import Verification
ae = AE(ae_title="PYNETDICOM")
ae.add_requested_context(Verification)
assoc = ae.associate("127.0.0.1", int(sys.argv[1]), ae_title=sys.argv[2])
if not assoc.is_established:
    sys.exit("association failed")
status = assoc.send_c_echo()
assoc.release()
print("status=0x%04X" % status.Status)
"#;
    let port = orthanc.dicom_port.to_string();
    let Some(mut cmd) = python_script(script, &[&port, &orthanc.aet]) else {
        return;
    };
    let out = run(&mut cmd, TOOL_TIMEOUT);
    out.assert_success("pynetdicom C-ECHO");
    assert_eq!(out.stdout.trim(), "status=0x0000");
}

#[test]
fn mosquitto_plain_round_trip() {
    let Some(broker) = Mosquitto::start() else {
        return;
    };
    let Some(mut publish) = broker.client("mosquitto_pub") else {
        return;
    };
    let message = "{\"report_id\":\"r-1\"}";
    run(
        publish.args([
            "-q",
            "1",
            "-r",
            "-t",
            "duli/site/dev/reports",
            "-m",
            message,
        ]),
        TOOL_TIMEOUT,
    )
    .assert_success("mosquitto_pub");
    let Some(mut subscribe) = broker.client("mosquitto_sub") else {
        return;
    };
    let out = run(
        subscribe.args(["-q", "1", "-C", "1", "-W", "10", "-t", "duli/+/+/reports"]),
        TOOL_TIMEOUT,
    );
    out.assert_success("mosquitto_sub");
    assert_eq!(out.stdout.trim(), message);
}

#[test]
fn mosquitto_tls_round_trip_requires_client_certificate() {
    let dir = temp_dir("pki");
    let Some(pki) = TestPki::generate(dir.path(), "mqtt") else {
        return;
    };
    let Some(broker) = Mosquitto::builder().tls(&pki, true).start() else {
        return;
    };
    let Some(mut publish) = broker.tls_client("mosquitto_pub", true) else {
        return;
    };
    run(
        publish.args(["-r", "-t", "duli/s/d/status", "-m", "online"]),
        TOOL_TIMEOUT,
    )
    .assert_success("mosquitto_pub over TLS");
    let mut subscribe = broker.tls_client("mosquitto_sub", true).unwrap();
    let out = run(
        subscribe.args(["-C", "1", "-W", "10", "-t", "duli/s/d/status"]),
        TOOL_TIMEOUT,
    );
    out.assert_success("mosquitto_sub over TLS");
    assert_eq!(out.stdout.trim(), "online");

    let mut anonymous = broker.tls_client("mosquitto_pub", false).unwrap();
    let refused = run(
        anonymous.args(["-t", "duli/s/d/status", "-m", "x"]),
        TOOL_TIMEOUT,
    );
    assert!(
        !refused.success(),
        "a client without a certificate must be refused:\n{}",
        refused.combined()
    );
    thread::sleep(Duration::from_millis(200));
    assert!(
        broker
            .process
            .log()
            .contains("peer did not return a certificate"),
        "the broker refused for the missing certificate:\n{}",
        broker.process.log()
    );
}
