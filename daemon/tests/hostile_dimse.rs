//! DIMSE requests the association did not agree on, from a hand-driven peer on a real
//! socket: each is refused with its standard status, nothing refused is stored or
//! answered with data, every refusal is audited, and the association serves on. Also
//! floods of connections that never send an A-ASSOCIATE-RQ, beside which a C-ECHO is
//! still answered within a second.

mod common;
#[path = "common/raw_peer.rs"]
mod raw_peer;

use common::*;
use dicom_ul::pdu::{AssociationRJResult, Pdu};
use duli::dimse::command::{Command, Priority};
use duli::dimse::uids;
use raw_peer::{Outcome, Proposal, RawPeer, EXPLICIT_LE};
use std::io::Read;
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A chest X-ray: (path, SOP class, SOP instance, its data set in Explicit VR LE); the
/// shared sample or a synthetic one ([`common::inference::chest_dx`]).
fn sample() -> Option<(PathBuf, String, String, Vec<u8>)> {
    let path = common::inference::chest_dx("NORMAL_01.dcm")?;
    let p = duli::scu::prepare(&path).unwrap();
    assert_eq!(p.transfer_syntax, EXPLICIT_LE, "{}", path.display());
    let bytes = std::fs::read(&path).unwrap();
    let data = bytes[p.offset as usize..].to_vec();
    Some((path, p.sop_class, p.sop_instance, data))
}

fn open(d: &Daemon, calling: &str, contexts: &[Proposal], roles: &[(&str, bool, bool)]) -> RawPeer {
    match RawPeer::associate(d.dicom_addr(), calling, DULI_AET, contexts, roles).unwrap() {
        Outcome::Accepted(peer) => peer,
        Outcome::Refused(pdu) => panic!("association of {calling} refused: {pdu:?}"),
    }
}

fn ctx(id: u8, abstract_syntax: &str) -> Proposal<'_> {
    Proposal {
        id,
        abstract_syntax,
        transfer_syntaxes: &[EXPLICIT_LE],
    }
}

/// One Explicit VR Little Endian element with an even-padded value.
fn element(group: u16, elem: u16, vr: &[u8; 2], value: &str, pad: u8) -> Vec<u8> {
    let mut v = value.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(pad);
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&elem.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend(v);
    out
}

/// A study-level identifier (Explicit VR LE) asking for every study with its patient.
fn study_identifier() -> Vec<u8> {
    let mut id = element(0x0008, 0x0052, b"CS", "STUDY", b' ');
    id.extend(element(0x0010, 0x0010, b"PN", "", b' '));
    id.extend(element(0x0010, 0x0020, b"LO", "", b' '));
    id.extend(element(0x0020, 0x000D, b"UI", "", 0));
    id
}

fn status(rsp: &Command) -> u16 {
    rsp.status.map(|s| s.0).unwrap_or(0xFFFF)
}

/// The audit records (as JSON) of a stopped daemon's store.
fn audit_records(d: &mut Daemon) -> Vec<serde_json::Value> {
    assert!(d.terminate(Duration::from_secs(30)).is_some());
    let db = sled::open(d.data_dir().join("index")).unwrap();
    let tree = db.open_tree("audit").unwrap();
    tree.iter()
        .map(|kv| serde_json::from_slice(&kv.unwrap().1).unwrap())
        .collect()
}

fn refusals_of<'a>(records: &'a [serde_json::Value], actor: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["actor"] == actor && r["success"] == false)
        .filter(|r| r["detail"].as_str().is_some_and(|d| d.contains("refused")))
        .collect()
}

#[test]
fn a_peer_without_store_cannot_store_through_a_c_get_storage_context() {
    let Some((_, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let mut d = Daemon::builder()
        .config(
            "dicom",
            "allowed_peers",
            r#"[{ae_title = "PACS", permissions = ["echo", "find", "move", "get"]},
                {ae_title = "MODALITY", permissions = ["echo", "store"]}]"#,
        )
        .start();
    // As a C-GET SCU does: the storage class proposed with SCP/SCU role selection.
    let mut pacs = open(
        &d,
        "PACS",
        &[ctx(1, &sop_class), ctx(3, uids::VERIFICATION)],
        &[(&sop_class, true, true)],
    );
    assert!(pacs.accepted(1).is_some(), "kept for C-GET sub-operations");
    // A C-STORE on it: refused, "not authorized".
    let rq = Command::store_rq(1, &sop_class, &sop_instance, Priority::Medium);
    let rsp = pacs.request(1, &rq, Some(&data)).unwrap();
    assert_eq!(status(&rsp), 0x0124, "{rsp:?}");
    assert_eq!(rsp.message_id_being_responded_to, Some(1));
    assert_eq!(
        rsp.affected_sop_instance_uid.as_deref(),
        Some(&*sop_instance)
    );
    assert!(rsp.error_comment.is_some());
    // The same refusal again and again: answered each time, on the trail once (per
    // address, AE, command, status and ten minutes), so it cannot fill the trail.
    for message_id in 10..15 {
        let rq = Command::store_rq(message_id, &sop_class, &sop_instance, Priority::Medium);
        let rsp = pacs.request(1, &rq, Some(&data)).unwrap();
        assert_eq!(status(&rsp), 0x0124, "{rsp:?}");
    }
    // The reply gave it the SCP role only (it sent the C-STORE all the same).
    let roles = pacs.roles(&sop_class).expect("roles answered");
    assert!(roles.scp && !roles.scu, "{roles:?}");
    // The association serves on.
    let echo = pacs.request(3, &Command::echo_rq(2), None).unwrap();
    assert_eq!(status(&echo), 0x0000);
    pacs.release().unwrap();
    // Nothing stored, nothing to analyse.
    assert_eq!(d.metric("duli_store_instances"), Some(0.0));
    assert_eq!(d.metric("duli_requests_refused_total"), Some(6.0));
    let studies = run(&mut d.command(&["studies"]), Duration::from_secs(60));
    studies.assert_success("duli studies");
    assert_eq!(studies.stdout.trim(), "[]", "{}", studies.stdout);
    assert!(d.log().contains("refused with 0124H"), "{}", d.log());

    // A peer with `store` still stores the same instance.
    let mut modality = open(&d, "MODALITY", &[ctx(1, &sop_class)], &[]);
    let rsp = modality
        .request(
            1,
            &Command::store_rq(1, &sop_class, &sop_instance, Priority::Medium),
            Some(&data),
        )
        .unwrap();
    assert_eq!(status(&rsp), 0x0000, "{rsp:?}");
    modality.release().unwrap();
    assert_eq!(d.metric("duli_store_instances"), Some(1.0));

    let records = audit_records(&mut d);
    let refused = refusals_of(&records, "ae:PACS");
    assert_eq!(refused.len(), 1, "{records:#?}");
    assert_eq!(refused[0]["action"], "import");
    assert_eq!(refused[0]["object"], sop_instance.as_str());
    assert_eq!(refused[0]["source"], "127.0.0.1");
    let detail = refused[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("0124") && detail.contains("store permission"),
        "{detail}"
    );
}

#[test]
fn operations_on_contexts_of_other_services_are_refused_and_the_association_serves_on() {
    let Some((_, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let mut d = Daemon::start();
    let mut peer = open(
        &d,
        "MODALITY",
        &[
            ctx(1, uids::VERIFICATION),
            ctx(3, uids::STUDY_ROOT_QR_FIND),
            ctx(5, &sop_class),
        ],
        &[],
    );
    for id in [1, 3, 5] {
        assert_eq!(peer.accepted(id), Some(EXPLICIT_LE), "context {id}");
    }
    // C-STORE on the Verification context.
    let store = Command::store_rq(1, &sop_class, &sop_instance, Priority::Medium);
    let rsp = peer.request(1, &store, Some(&data)).unwrap();
    assert_eq!(status(&rsp), 0x0211, "C-STORE on Verification: {rsp:?}");
    // C-MOVE on the FIND context.
    let rq = Command::move_rq(2, uids::STUDY_ROOT_QR_MOVE, Priority::Medium, "MODALITY");
    let rsp = peer.request(3, &rq, Some(&study_identifier())).unwrap();
    assert_eq!(status(&rsp), 0x0211, "C-MOVE on FIND: {rsp:?}");
    assert_eq!(rsp.message_id_being_responded_to, Some(2));
    // C-STORE on a storage context naming another SOP class.
    let rq = Command::store_rq(
        3,
        uids::COMPUTED_RADIOGRAPHY,
        &sop_instance,
        Priority::Medium,
    );
    let rsp = peer.request(5, &rq, Some(&data)).unwrap();
    assert_eq!(
        status(&rsp),
        0x0122,
        "C-STORE naming CR on a DX context: {rsp:?}"
    );
    // C-ECHO on the FIND context.
    let rsp = peer.request(3, &Command::echo_rq(4), None).unwrap();
    assert_eq!(status(&rsp), 0x0211, "C-ECHO on FIND: {rsp:?}");
    // The association still serves what was agreed.
    let rsp = peer.request(1, &Command::echo_rq(5), None).unwrap();
    assert_eq!(status(&rsp), 0x0000);
    let rsp = peer.request(5, &store, Some(&data)).unwrap();
    assert_eq!(status(&rsp), 0x0000, "{rsp:?}");
    peer.release().unwrap();
    assert_eq!(d.metric("duli_store_instances"), Some(1.0));
    assert_eq!(d.metric("duli_requests_refused_total"), Some(4.0));
    let records = audit_records(&mut d);
    let refused = refusals_of(&records, "ae:MODALITY");
    let actions: Vec<&str> = refused
        .iter()
        .map(|r| r["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["import", "transfer", "import", "other"],
        "{records:#?}"
    );
}

#[test]
fn a_peer_without_find_cannot_query_through_its_move_context() {
    let Some((_, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let d = Daemon::builder()
        .config(
            "dicom",
            "allowed_peers",
            r#"[{ae_title = "ROUTER", permissions = ["echo", "move"]},
                {ae_title = "MODALITY", permissions = ["echo", "store"]}]"#,
        )
        .start();
    // A study to leak.
    let mut modality = open(&d, "MODALITY", &[ctx(1, &sop_class)], &[]);
    let stored = modality
        .request(
            1,
            &Command::store_rq(1, &sop_class, &sop_instance, Priority::Medium),
            Some(&data),
        )
        .unwrap();
    assert_eq!(status(&stored), 0x0000);
    modality.release().unwrap();

    let mut router = open(
        &d,
        "ROUTER",
        &[
            ctx(1, uids::STUDY_ROOT_QR_MOVE),
            ctx(3, uids::STUDY_ROOT_QR_FIND),
            ctx(5, uids::VERIFICATION),
        ],
        &[],
    );
    assert!(router.accepted(1).is_some());
    assert!(
        router.accepted(3).is_none(),
        "FIND context refused at negotiation"
    );
    // C-FIND on the MOVE context (named as either class): refused, no match sent.
    for (message_id, named) in [(1, uids::STUDY_ROOT_QR_FIND), (2, uids::STUDY_ROOT_QR_MOVE)] {
        let rq = Command::find_rq(message_id, named, Priority::Medium);
        let rsp = router.request(1, &rq, Some(&study_identifier())).unwrap();
        assert!(!rsp.has_data_set, "a match was sent: {rsp:?}");
        assert_eq!(status(&rsp), 0x0211, "C-FIND naming {named}: {rsp:?}");
    }
    let rsp = router.request(5, &Command::echo_rq(3), None).unwrap();
    assert_eq!(status(&rsp), 0x0000);
    router.release().unwrap();
    assert_eq!(d.metric("duli_requests_refused_total"), Some(2.0));
}

#[test]
fn repeated_refusals_end_the_association() {
    let d = Daemon::start();
    let mut peer = open(
        &d,
        "MODALITY",
        &[ctx(1, uids::VERIFICATION), ctx(3, uids::STUDY_ROOT_QR_FIND)],
        &[],
    );
    for message_id in 1..=8 {
        let rsp = peer
            .request(3, &Command::echo_rq(message_id), None)
            .unwrap();
        assert_eq!(status(&rsp), 0x0211, "refusal {message_id}: {rsp:?}");
    }
    let ended = peer.command().unwrap_err();
    assert!(ended.to_string().contains("AbortRQ"), "{ended}");
    // The abort is logged just after it is sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !d.log().contains("8 refused requests") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(d.log().contains("8 refused requests"), "{}", d.log());
}

/// Associates, echoes and releases on a fresh association; returns how long it took.
fn timed_echo(d: &Daemon) -> Duration {
    let started = Instant::now();
    let mut peer = open(d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
    let rsp = peer.request(1, &Command::echo_rq(1), None).unwrap();
    assert_eq!(status(&rsp), 0x0000);
    peer.release().unwrap();
    started.elapsed()
}

#[test]
fn six_hundred_silent_connections_do_not_delay_an_echo() {
    // Fewer association slots than silent sockets: they must not count against them.
    let d = Daemon::builder()
        .config("dicom", "max_associations", "2")
        .start();
    let before = timed_echo(&d);
    // More than the whole table of unassociated connections holds (512), all from the
    // address the echoes come from.
    let silent: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(d.dicom_addr()).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        worst = worst.max(timed_echo(&d));
    }
    assert!(
        worst < Duration::from_secs(1),
        "echo took {worst:?} (alone: {before:?})"
    );
    // Only the newest are held; the daemon closed the rest.
    let mut closed = 0;
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let still_open = match s.read(&mut [0u8; 1]) {
            Ok(n) => n > 0,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        };
        if !still_open {
            closed += 1;
        }
    }
    assert!(
        closed >= 600 - 32,
        "only {closed} of 600 silent connections closed"
    );
    let evicted = d.metric("duli_connections_evicted_total").unwrap();
    assert!(evicted >= 568.0, "{evicted}");
}

#[test]
fn one_address_holds_at_most_its_share_of_the_associations() {
    let d = Daemon::builder()
        .config("dicom", "max_associations", "6")
        .config("dicom", "max_associations_per_address", "2")
        .start();
    // Two from 127.0.0.1 are accepted and held open; a third from it is rejected
    // (transient), while another address still gets in.
    let held: Vec<RawPeer> = (0..2)
        .map(|_| open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]))
        .collect();
    let third = RawPeer::associate(
        d.dicom_addr(),
        "MODALITY",
        DULI_AET,
        &[ctx(1, uids::VERIFICATION)],
        &[],
    )
    .unwrap();
    assert!(
        matches!(third, Outcome::Refused(_)),
        "a third association from one address was accepted"
    );
    assert!(
        d.log().contains("already holds 2 associations"),
        "{}",
        d.log()
    );
    let Outcome::Accepted(mut elsewhere) = RawPeer::associate_from(
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        d.dicom_addr(),
        "MODALITY",
        DULI_AET,
        &[ctx(1, uids::VERIFICATION)],
        &[],
    )
    .unwrap() else {
        panic!("another address was refused");
    };
    let echo = elsewhere.request(1, &Command::echo_rq(1), None).unwrap();
    assert_eq!(status(&echo), 0x0000);
    elsewhere.release().unwrap();
    for p in held {
        p.release().unwrap();
    }
    // Their slots came back.
    open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[])
        .release()
        .unwrap();
}

#[test]
fn a_data_set_with_no_command_before_it_ends_the_association() {
    let d = Daemon::start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
    peer.data_only(1, &[0u8; 64]).unwrap();
    // The daemon aborts: the next read ends (A-ABORT, then the connection closes).
    assert!(peer.command().is_err(), "the association went on");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("without a command announcing a data set") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // And it serves the next peer.
    let mut next = open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
    let echo = next.request(1, &Command::echo_rq(1), None).unwrap();
    assert_eq!(status(&echo), 0x0000);
    next.release().unwrap();
}

/// On a dual-stack listener (`bind = "::"`) an IPv4 peer arrives as `::ffff:a.b.c.d`: the
/// allow-list entry written with its IPv4 address still admits it and the per-address
/// share counts it as that address, while an IPv6 peer is held to the entry's address.
#[test]
fn a_dual_stack_listener_sees_ipv4_peers_as_their_ipv4_address() {
    let d = Daemon::builder()
        .config("dicom", "bind", "::")
        .config(
            "dicom",
            "allowed_peers",
            r#"[{ae_title = "MODALITY", address = "127.0.0.1", permissions = ["echo"]}]"#,
        )
        .config("dicom", "max_associations_per_address", "1")
        .start();
    let port = d.dicom_port;
    let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    let associate = |addr| {
        RawPeer::associate(
            addr,
            "MODALITY",
            DULI_AET,
            &[ctx(1, uids::VERIFICATION)],
            &[],
        )
        .unwrap()
    };
    let Outcome::Accepted(mut first) = associate(v4) else {
        panic!("the allow-listed IPv4 peer was refused:\n{}", d.log());
    };
    let echo = first.request(1, &Command::echo_rq(1), None).unwrap();
    assert_eq!(status(&echo), 0x0000);
    // Its share is one association: a second from 127.0.0.1 is refused (transient).
    match associate(v4) {
        Outcome::Refused(Pdu::AssociationRJ(rj)) => {
            assert_eq!(rj.result, AssociationRJResult::Transient, "{rj:?}")
        }
        Outcome::Refused(other) => panic!("a second association from 127.0.0.1: {other:?}"),
        Outcome::Accepted(_) => panic!("a second association from 127.0.0.1 was accepted"),
    }
    // ::1 is not the allow-listed address: refused for good.
    match associate(v6) {
        Outcome::Refused(Pdu::AssociationRJ(rj)) => {
            assert_eq!(rj.result, AssociationRJResult::Permanent, "{rj:?}")
        }
        Outcome::Refused(other) => panic!("MODALITY from ::1: {other:?}"),
        Outcome::Accepted(_) => panic!("MODALITY from ::1 was accepted"),
    }
    first.release().unwrap();
}

/// A peer that sends requests but never reads the responses: once the socket buffers are
/// full the daemon's writes make no progress, and the idle timeout ends the association
/// (writes are held to it as reads are), freeing its slot for the next peer.
#[test]
fn a_peer_that_stops_reading_loses_its_association_after_the_idle_timeout() {
    let d = Daemon::builder()
        .config("dicom", "idle_timeout", "2")
        .config("dicom", "max_associations", "1")
        .start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
    let started = Instant::now();
    // Echo requests until a write fails: the daemon stops reading while its own writes
    // wait, the buffers fill, and the connection ends when the daemon gives up.
    let flood = std::thread::spawn(move || {
        let mut sent = 0u32;
        while peer
            .send(1, &Command::echo_rq((sent % 60_000) as u16 + 1), None)
            .is_ok()
        {
            sent += 1;
        }
        sent
    });
    let deadline = Instant::now() + Duration::from_secs(90);
    while !flood.is_finished() {
        assert!(
            Instant::now() < deadline,
            "the association of a peer that never reads is still open after 90 s:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let sent = flood.join().unwrap();
    eprintln!(
        "{sent} echo requests unread, association ended after {:?}",
        started.elapsed()
    );
    // The one association slot is free again.
    assert!(timed_echo(&d) < Duration::from_secs(5));
}

/// Over the network, a C-FIND whose key is a pattern of 60,000 stars (a matching that
/// would cost seconds per stored study) is refused with A900 before any matching, its
/// comment naming the key, and the association serves the next C-FIND.
#[test]
fn an_oversized_c_find_key_is_refused_and_the_association_serves_on() {
    let d = Daemon::start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, uids::STUDY_ROOT_QR_FIND)], &[]);
    let mut id = element(0x0008, 0x0052, b"CS", "STUDY", b' ');
    id.extend(element(
        0x0010,
        0x0010,
        b"PN",
        &format!("{}Z", "*".repeat(59_999)),
        b' ',
    ));
    id.extend(element(0x0020, 0x000D, b"UI", "", 0));
    let rq = Command::find_rq(1, uids::STUDY_ROOT_QR_FIND, Priority::Medium);
    let rsp = peer.request(1, &rq, Some(&id)).unwrap();
    assert_eq!(status(&rsp), 0xA900, "{rsp:?}");
    assert!(
        rsp.error_comment
            .as_deref()
            .is_some_and(|c| c.contains("(0010,0010)")),
        "{rsp:?}"
    );
    let rq = Command::find_rq(2, uids::STUDY_ROOT_QR_FIND, Priority::Medium);
    let rsp = peer.request(1, &rq, Some(&study_identifier())).unwrap();
    assert_eq!(status(&rsp), 0x0000, "{rsp:?}");
    peer.release().unwrap();
}

/// A loop of queries (a find permission is enough) cannot grow the audit trail without
/// bound: each record's query description is held to 1 KiB whatever keys the peer sends,
/// and past 300 queries and retrieves a minute from one calling AE and address the next
/// is refused (A700) and not run.
#[test]
fn a_query_flood_is_refused_past_its_rate_with_bounded_audit_records() {
    let mut d = Daemon::start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, uids::STUDY_ROOT_QR_FIND)], &[]);
    let mut id = element(0x0008, 0x0052, b"CS", "STUDY", b' ');
    id.extend(element(0x0009, 0x0010, b"LO", "FLOOD", b' '));
    for i in 0..30u16 {
        id.extend(element(0x0009, 0x1000 + i, b"LO", &"A".repeat(60), b' '));
    }
    id.extend(element(0x0010, 0x0020, b"LO", "NOSUCH", b' '));
    id.extend(element(0x0020, 0x000D, b"UI", "", 0));
    let mut refused_at = None;
    for n in 1..=320u16 {
        let rq = Command::find_rq(n, uids::STUDY_ROOT_QR_FIND, Priority::Medium);
        let rsp = peer.request(1, &rq, Some(&id)).unwrap();
        match status(&rsp) {
            0x0000 => {}
            0xA700 => {
                assert!(
                    rsp.error_comment
                        .as_deref()
                        .is_some_and(|c| c.contains("too many queries")),
                    "{rsp:?}"
                );
                refused_at = Some(n);
                break;
            }
            other => panic!("query {n}: status {other:04X} {rsp:?}"),
        }
    }
    assert_eq!(
        refused_at,
        Some(301),
        "the 301st query of the minute is refused"
    );
    peer.release().unwrap();
    // The budget is the client's, not the calling AE title's (which the peer chooses):
    // calling as another AE from the same host gets no fresh one.
    let mut other = open(&d, "GETSCU", &[ctx(1, uids::STUDY_ROOT_QR_FIND)], &[]);
    let rq = Command::find_rq(1, uids::STUDY_ROOT_QR_FIND, Priority::Medium);
    let rsp = other.request(1, &rq, Some(&id)).unwrap();
    assert_eq!(status(&rsp), 0xA700, "{rsp:?}");
    other.release().unwrap();
    let records = audit_records(&mut d);
    let queries: Vec<_> = records
        .iter()
        .filter(|r| r["actor"] == "ae:MODALITY" && r["action"] == "query")
        .collect();
    assert!(
        (300..=301).contains(&queries.len()),
        "{} query records",
        queries.len()
    );
    let longest = queries
        .iter()
        .map(|r| r["detail"].as_str().unwrap_or_default().len())
        .max()
        .unwrap();
    assert!(longest <= 1200, "a query's audit detail is {longest} bytes");
}

/// A refused association (here a wrong called AE title, as an AE-title guesser sends) is
/// audited, once per address, calling AE and ten minutes, so guessing leaves a trace and a
/// flood of attempts cannot fill the trail.
#[test]
fn refused_associations_are_audited_once_per_window() {
    let mut d = Daemon::start();
    for _ in 0..3 {
        match RawPeer::associate(
            d.dicom_addr(),
            "GUESSER",
            "NOT_THIS_BOX",
            &[ctx(1, uids::VERIFICATION)],
            &[],
        )
        .unwrap()
        {
            Outcome::Refused(_) => {}
            Outcome::Accepted(_) => panic!("a wrong called AE title was accepted"),
        }
    }
    let records = audit_records(&mut d);
    let rejected: Vec<_> = records
        .iter()
        .filter(|r| r["actor"] == "ae:GUESSER" && r["success"] == false)
        .filter(|r| {
            r["detail"]
                .as_str()
                .is_some_and(|d| d.contains("association rejected"))
        })
        .collect();
    assert_eq!(rejected.len(), 1, "{records:?}");
    assert_eq!(rejected[0]["source"], "127.0.0.1");
}

/// PDUs that make no progress (empty command fragments) do not hold an association open:
/// the idle timeout runs from the last whole command or data bytes, so two addresses
/// cannot keep every slot with a PDU every two minutes.
#[test]
fn empty_fragments_do_not_keep_an_association_past_the_idle_timeout() {
    let d = Daemon::builder()
        .config("dicom", "idle_timeout", "2")
        .config("dicom", "max_associations", "1")
        .start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
    let echo = peer.request(1, &Command::echo_rq(1), None).unwrap();
    assert_eq!(status(&echo), 0x0000);
    let started = Instant::now();
    let mut ended = None;
    while started.elapsed() < Duration::from_secs(15) {
        if peer.empty_command_fragment(1).is_err() {
            ended = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let ended = ended.unwrap_or_else(|| panic!("still open after 15 s:\n{}", d.log()));
    assert!(ended < Duration::from_secs(8), "ended after {ended:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("idle for") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // The one slot is free again.
    assert!(timed_echo(&d) < Duration::from_secs(5));
}

/// A C-ECHO request that announces a data set (PS3.7 gives it none) ends the association
/// instead of streaming the data set into nothing, uncounted; so does a response to
/// nothing the box asked (a C-ECHO-RSP, a C-FIND-RSP), which is never answered with a
/// response of its own.
#[test]
fn a_request_that_takes_no_data_set_but_announces_one_ends_the_association() {
    let d = Daemon::start();
    let wait_for = |line: &str| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !d.log().contains(line) {
            assert!(Instant::now() < deadline, "{line}: {}", d.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let mut peer = open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
    let mut rq = Command::echo_rq(1);
    rq.has_data_set = true;
    peer.send(1, &rq, Some(&[0u8; 4096])).unwrap();
    assert!(peer.command().is_err(), "the association went on");
    wait_for("announces a data set, which it never carries");
    for (field, name) in [
        (duli::dimse::CommandField::CEchoRsp, "C-ECHO-RSP"),
        (duli::dimse::CommandField::CFindRsp, "C-FIND-RSP"),
    ] {
        let mut peer = open(&d, "MODALITY", &[ctx(1, uids::VERIFICATION)], &[]);
        let mut rsp = Command::new(field);
        rsp.message_id_being_responded_to = Some(1);
        rsp.affected_sop_class_uid = Some(uids::VERIFICATION.into());
        rsp.status = Some(duli::dimse::Status::SUCCESS);
        peer.send(1, &rsp, None).unwrap();
        assert!(peer.command().is_err(), "{name}: the association went on");
        wait_for(&format!("unsolicited {name}; aborted"));
    }
    let echo = timed_echo(&d);
    assert!(echo < Duration::from_secs(5), "{echo:?}");
}

/// `data` (Explicit VR LE) with the value of its SOP Class UID (0008,0016) replaced.
fn with_sop_class_value(data: &[u8], value: &[u8]) -> Vec<u8> {
    let at = data
        .windows(6)
        .position(|w| w == [0x08, 0x00, 0x16, 0x00, b'U', b'I'])
        .expect("SOP Class UID in the data set");
    let old_len = u16::from_le_bytes([data[at + 6], data[at + 7]]) as usize;
    let mut v = value.to_vec();
    if v.len() % 2 == 1 {
        v.push(0);
    }
    let mut out = data[..at + 6].to_vec();
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend(v);
    out.extend_from_slice(&data[at + 8 + old_len..]);
    out
}

/// `data` without its (0008,`element`) UI element.
fn without_uid(data: &[u8], element: u16) -> Vec<u8> {
    let e = element.to_le_bytes();
    let at = data
        .windows(6)
        .position(|w| w == [0x08, 0x00, e[0], e[1], b'U', b'I'])
        .expect("the element in the data set");
    let len = u16::from_le_bytes([data[at + 6], data[at + 7]]) as usize;
    let mut out = data[..at].to_vec();
    out.extend_from_slice(&data[at + 8 + len..]);
    out
}

/// A data set that lacks its own SOP Instance UID or SOP Class UID is refused (C000,
/// named in the Error Comment): the file meta this box writes from the command must not
/// stand in for them, or the check of the data set against the command would compare the
/// command with itself, and the stored object would go out by C-MOVE without its identity.
#[test]
fn a_data_set_without_its_own_sop_uids_is_refused() {
    let Some((_, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let d = Daemon::start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, &sop_class)], &[]);
    for (n, (what, stripped)) in [
        ("SOP Instance UID", without_uid(&data, 0x0018)),
        ("SOP Class UID", without_uid(&data, 0x0016)),
        (
            "SOP Instance UID",
            without_uid(&without_uid(&data, 0x0016), 0x0018),
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let rq = Command::store_rq(n as u16 + 1, &sop_class, &sop_instance, Priority::Medium);
        let rsp = peer.request(1, &rq, Some(&stripped)).unwrap();
        assert_eq!(status(&rsp) & 0xF000, 0xC000, "{what}: {rsp:?}");
        let comment = rsp.error_comment.clone().unwrap_or_default();
        assert!(comment.contains(what), "{what}: {rsp:?}");
    }
    // The whole data set is stored.
    let rq = Command::store_rq(9, &sop_class, &sop_instance, Priority::Medium);
    assert_eq!(status(&peer.request(1, &rq, Some(&data)).unwrap()), 0);
    peer.release().unwrap();
    assert_eq!(d.metric("duli_store_instances"), Some(1.0));
}

#[test]
fn a_sop_class_uid_with_a_line_break_is_refused_without_forging_a_log_line() {
    let Some((_, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let forged = with_sop_class_value(&data, b"1.2.840.10008.5.1.4.1.1.1\nFORGED LINE\r");
    let d = Daemon::start();
    let mut peer = open(&d, "MODALITY", &[ctx(1, &sop_class)], &[]);
    let rq = Command::store_rq(1, &sop_class, &sop_instance, Priority::Medium);
    let rsp = peer.request(1, &rq, Some(&forged)).unwrap();
    assert_ne!(status(&rsp), 0x0000, "{rsp:?}");
    let comment = rsp.error_comment.clone().unwrap_or_default();
    assert!(comment.contains("SOP Class UID"), "{rsp:?}");
    assert!(!comment.contains(['\n', '\r']), "{comment:?}");
    peer.release().unwrap();
    assert_eq!(d.metric("duli_store_instances"), Some(0.0));
    let log = d.log_once_it_holds("released by", Duration::from_secs(10));
    assert!(log.contains("FORGED LINE"), "{log}");
    assert!(!log.contains('\r'), "{log}");
    assert!(
        log.lines().all(|l| !l.starts_with("FORGED")),
        "a line of the peer's own:\n{log}"
    );
}

/// Stores the sample (as MODALITY) and returns a STUDY-level identifier naming its study.
fn stored_study_identifier(
    d: &Daemon,
    path: &std::path::Path,
    sop_class: &str,
    sop_instance: &str,
    data: &[u8],
) -> Vec<u8> {
    let mut modality = open(d, "MODALITY", &[ctx(1, sop_class)], &[]);
    let rq = Command::store_rq(1, sop_class, sop_instance, Priority::Medium);
    assert_eq!(status(&modality.request(1, &rq, Some(data)).unwrap()), 0);
    modality.release().unwrap();
    let study = dicom_object::open_file(path)
        .unwrap()
        .element(dicom_dictionary_std::tags::STUDY_INSTANCE_UID)
        .unwrap()
        .to_str()
        .unwrap()
        .trim_end_matches('\0')
        .to_string();
    let mut id = element(0x0008, 0x0052, b"CS", "STUDY", b' ');
    id.extend(element(0x0020, 0x000D, b"UI", &study, 0));
    id
}

/// While a C-GET waits for its sub-operation's response, a request naming the C-GET's
/// Message ID is a duplicate invocation (0210) and any other request is refused busy
/// (A700), each at once: neither is taken for the C-GET's end, so the association goes on
/// reading and the C-GET completes once its sub-operation is answered.
#[test]
fn a_request_reusing_the_running_message_id_is_a_duplicate_and_holds_nothing_up() {
    let Some((path, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let d = Daemon::start();
    let id = stored_study_identifier(&d, &path, &sop_class, &sop_instance, &data);
    let mut getscu = open(
        &d,
        "GETSCU",
        &[
            ctx(1, uids::STUDY_ROOT_QR_GET),
            ctx(3, &sop_class),
            ctx(5, uids::STUDY_ROOT_QR_FIND),
        ],
        &[(&sop_class, false, true)],
    );
    let get = Command::get_rq(7, uids::STUDY_ROOT_QR_GET, Priority::Medium);
    getscu.send(1, &get, Some(&id)).unwrap();
    let store = getscu.command().unwrap();
    assert_eq!(
        store.affected_sop_instance_uid.as_deref(),
        Some(&*sop_instance)
    );
    let asked = Instant::now();
    let find =
        |message_id| Command::find_rq(message_id, uids::STUDY_ROOT_QR_FIND, Priority::Medium);
    let rsp = getscu
        .request(5, &find(7), Some(&study_identifier()))
        .unwrap();
    assert_eq!(status(&rsp), 0x0210, "{rsp:?}");
    let rsp = getscu
        .request(5, &find(8), Some(&study_identifier()))
        .unwrap();
    assert_eq!(status(&rsp), 0xA700, "{rsp:?}");
    assert!(
        asked.elapsed() < Duration::from_secs(20),
        "{:?}",
        asked.elapsed()
    );
    // The sub-operation answered: the C-GET ends, with success.
    getscu
        .send(
            3,
            &Command::store_rsp(&store, duli::dimse::Status::SUCCESS),
            None,
        )
        .unwrap();
    let done = getscu.command().unwrap();
    assert_eq!(done.message_id_being_responded_to, Some(7), "{done:?}");
    assert_eq!(status(&done), 0x0000, "{done:?}");
    getscu.release().unwrap();
}

/// A C-GET SCU that releases while the daemon waits for the response to a C-STORE
/// sub-operation (instead of answering it) gets its A-RELEASE-RP at once: the operation
/// ends with the release, not when the sub-operation's 120 s wait runs out.
#[test]
fn a_release_while_a_c_get_waits_for_a_store_response_is_answered_at_once() {
    let Some((path, sop_class, sop_instance, data)) = sample() else {
        return;
    };
    let d = Daemon::start();
    let id = stored_study_identifier(&d, &path, &sop_class, &sop_instance, &data);
    let mut getscu = open(
        &d,
        "GETSCU",
        &[ctx(1, uids::STUDY_ROOT_QR_GET), ctx(3, &sop_class)],
        &[(&sop_class, false, true)],
    );
    getscu
        .send(
            1,
            &Command::get_rq(7, uids::STUDY_ROOT_QR_GET, Priority::Medium),
            Some(&id),
        )
        .unwrap();
    // The sub-operation's C-STORE-RQ arrives; it is never answered.
    let store = getscu.command().unwrap();
    assert_eq!(
        store.affected_sop_instance_uid.as_deref(),
        Some(&*sop_instance)
    );
    let released = Instant::now();
    getscu.release().unwrap();
    let took = released.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "A-RELEASE-RP after {took:?}:\n{}",
        d.log()
    );
}

/// Storage Commitment reports (N-EVENT-REPORT) from a peer on the LAN that claims to be an
/// archive: each malformed one is refused with its standard status, one for a transaction
/// this box never issued is acknowledged and changes nothing, and the association serves
/// on. (Reports that answer a real request: `pipeline.rs`, with Orthanc.)
#[test]
fn commitment_reports_that_answer_nothing_are_refused_or_ignored() {
    let d = Daemon::start();
    let commit = uids::STORAGE_COMMITMENT_PUSH_MODEL;
    let mut peer = open(
        &d,
        "LAN_HOST",
        &[ctx(1, uids::VERIFICATION), ctx(3, commit)],
        &[(commit, false, true)],
    );
    assert_eq!(peer.accepted(3), Some(EXPLICIT_LE));
    let report = |id: u16, instance: &str, event: u16| {
        let mut rq = Command::new(duli::dimse::CommandField::NEventReportRq);
        rq.affected_sop_class_uid = Some(commit.into());
        rq.affected_sop_instance_uid = Some(instance.into());
        rq.message_id = Some(id);
        rq.event_type_id = Some(event);
        rq.has_data_set = true;
        rq
    };
    let well_known = uids::STORAGE_COMMITMENT_PUSH_MODEL_INSTANCE;
    let transaction = element(0x0008, 0x1195, b"UI", "2.25.1234567890", 0);
    let cases: [(&str, Command, Vec<u8>, u16); 4] = [
        (
            "another SOP instance",
            report(1, "1.2.3", 1),
            transaction.clone(),
            0x0112,
        ),
        (
            "event type 7",
            report(2, well_known, 7),
            transaction.clone(),
            0x0113,
        ),
        (
            "truncated event information",
            report(3, well_known, 1),
            transaction[..transaction.len() - 4].to_vec(),
            0x0110,
        ),
        (
            "no Transaction UID",
            report(4, well_known, 1),
            element(0x0010, 0x0010, b"PN", "DOE^JOHN", b' '),
            0x0110,
        ),
    ];
    for (what, rq, data, expected) in cases {
        let rsp = peer.request(3, &rq, Some(&data)).unwrap();
        assert_eq!(status(&rsp), expected, "{what}: {rsp:?}");
        assert_eq!(rsp.message_id_being_responded_to, rq.message_id, "{what}");
    }
    // A well-formed report for a transaction never issued: acknowledged, nothing taken.
    let rsp = peer
        .request(3, &report(5, well_known, 1), Some(&transaction))
        .unwrap();
    assert_eq!(status(&rsp), 0x0000, "{rsp:?}");
    assert_eq!(rsp.event_type_id, Some(1));
    let rsp = peer.request(1, &Command::echo_rq(6), None).unwrap();
    assert_eq!(status(&rsp), 0x0000);
    peer.release().unwrap();
    assert_eq!(
        d.metric("duli_commitment_reports_total{outcome=\"refused\"}"),
        Some(4.0)
    );
    assert_eq!(
        d.metric("duli_commitment_reports_total{outcome=\"ignored\"}"),
        Some(1.0)
    );
    assert_eq!(
        d.metric("duli_commitment_reports_total{outcome=\"answered\"}"),
        Some(0.0)
    );
    let log = d.log_once_it_holds("no longer waited for", Duration::from_secs(10));
    assert!(
        log.contains("Storage Commitment report from \"LAN_HOST\" refused"),
        "{log}"
    );
}
