//! The daemon as SCU (PACS push, `duli send`, C-MOVE sub-operations) against a PACS that
//! misbehaves: answers that answer another request, endless trickles of PDUs, a Maximum
//! Length of 1 byte. No real PACS misbehaves on demand, so the peer here is a scripted one:
//! a few lines of Rust on a loopback socket that read and write PDUs with dicom-ul's
//! encoder and decoder and do exactly what each case says. Also the audit record of a
//! C-MOVE whose requester goes away after the first sub-operation, with a real daemon.

mod common;
#[allow(dead_code, unused_imports)]
#[path = "common/hostile_peer.rs"]
mod hostile_peer;
#[path = "common/raw_peer.rs"]
mod raw_peer;

use common::*;
use dicom_ul::pdu::{
    AssociationAC, PDataValue, PDataValueType, Pdu, PresentationContextResult,
    PresentationContextResultReason, UserVariableItem,
};
use duli::deliver::Delivery;
use duli::dimse::command::{Command, Priority};
use duli::dimse::status::Status;
use duli::dimse::uids;
use duli::scu::{self, Target};
use duli::ul::client::{Client, ClientError, Request, TIMEOUT};
use std::io::{self, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Secondary Capture Image Storage: the class of the files sent here.
const SC: &str = "1.2.840.10008.5.1.4.1.1.7";

/// One association accepted by the scripted PACS.
struct Conn {
    stream: TcpStream,
    /// The data length of every data set PDV received, in order.
    data_pdvs: Vec<usize>,
}

impl Conn {
    fn read_pdu(&mut self) -> io::Result<Pdu> {
        let mut header = [0u8; 6];
        self.stream.read_exact(&mut header)?;
        let len = u32::from_be_bytes([header[2], header[3], header[4], header[5]]) as usize;
        let mut bytes = header.to_vec();
        bytes.resize(6 + len, 0);
        self.stream.read_exact(&mut bytes[6..])?;
        dicom_ul::pdu::read_pdu(&bytes[..], 16 * 1024 * 1024, false)
            .map_err(|e| io::Error::other(e.to_string()))?
            .ok_or_else(|| io::Error::other("incomplete PDU"))
    }

    fn write_pdu(&mut self, pdu: &Pdu) -> io::Result<()> {
        let mut bytes = Vec::new();
        dicom_ul::pdu::write_pdu(&mut bytes, pdu).map_err(|e| io::Error::other(e.to_string()))?;
        self.stream.write_all(&bytes)
    }

    /// Reads one whole request: (context, command, data set).
    fn request(&mut self) -> io::Result<(u8, Command, Vec<u8>)> {
        let mut command = Vec::new();
        let mut data = Vec::new();
        let mut rq: Option<(u8, Command)> = None;
        loop {
            let pdu = self.read_pdu()?;
            let Pdu::PData { data: pdvs } = pdu else {
                return Err(io::Error::other(format!("got {pdu:?}")));
            };
            for pdv in pdvs {
                if pdv.value_type == PDataValueType::Command {
                    command.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        let cmd = duli::dimse::decode(&command)
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        if !cmd.has_data_set {
                            return Ok((pdv.presentation_context_id, cmd, data));
                        }
                        rq = Some((pdv.presentation_context_id, cmd));
                    }
                } else {
                    self.data_pdvs.push(pdv.data.len());
                    data.extend_from_slice(&pdv.data);
                    if pdv.is_last {
                        let (pc, cmd) = rq.take().ok_or_else(|| io::Error::other("data first"))?;
                        return Ok((pc, cmd, data));
                    }
                }
            }
        }
    }

    /// Sends a command set as one PDV on context `pc`.
    fn answer(&mut self, pc: u8, rsp: &Command) -> io::Result<()> {
        self.pdv(pc, PDataValueType::Command, &duli::dimse::encode(rsp), true)
    }

    fn pdv(
        &mut self,
        pc: u8,
        value_type: PDataValueType,
        data: &[u8],
        last: bool,
    ) -> io::Result<()> {
        self.write_pdu(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type,
                is_last: last,
                data: data.to_vec(),
            }],
        })
    }

    /// Reads PDUs until the connection ends; returns the last one read.
    fn until_closed(&mut self) -> Option<Pdu> {
        let mut last = None;
        while let Ok(pdu) = self.read_pdu() {
            last = Some(pdu);
        }
        last
    }
}

/// A scripted PACS on a loopback port: accepts one association (every proposed context,
/// in its first transfer syntax, announcing `max_length` as its Maximum Length Received
/// when given) and runs `script` on it. Returns the port and the script's thread.
fn scripted_pacs<T: Send + 'static>(
    max_length: Option<u32>,
    script: impl FnOnce(&mut Conn) -> T + Send + 'static,
) -> (u16, JoinHandle<T>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let (stream, _) = listener.accept().unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(120)))
            .unwrap();
        let mut conn = Conn {
            stream,
            data_pdvs: Vec::new(),
        };
        let Pdu::AssociationRQ(rq) = conn.read_pdu().unwrap() else {
            panic!("no A-ASSOCIATE-RQ");
        };
        let ac = AssociationAC {
            protocol_version: 1,
            calling_ae_title: rq.calling_ae_title.clone(),
            called_ae_title: rq.called_ae_title.clone(),
            application_context_name: rq.application_context_name.clone(),
            presentation_contexts: rq
                .presentation_contexts
                .iter()
                .map(|p| PresentationContextResult {
                    id: p.id,
                    reason: PresentationContextResultReason::Acceptance,
                    transfer_syntax: p.transfer_syntaxes[0].clone(),
                })
                .collect(),
            user_variables: max_length
                .map(UserVariableItem::MaxLength)
                .into_iter()
                .collect(),
        };
        conn.write_pdu(&Pdu::AssociationAC(ac)).unwrap();
        script(&mut conn)
    });
    (port, thread)
}

fn target(port: u16) -> Target {
    Target {
        ae_title: "PACS".into(),
        host: "127.0.0.1".into(),
        port,
        tls: None,
    }
}

/// Writes a Part 10 Secondary Capture file of about `size` bytes named `uid`.
fn sc_file(dir: &Path, uid: &str, size: usize) -> PathBuf {
    use dicom_core::{DataElement, PrimitiveValue, VR};
    use dicom_dictionary_std::tags;
    let mut obj = dicom_object::InMemDicomObject::new_empty();
    obj.put(DataElement::new(
        tags::SOP_CLASS_UID,
        VR::UI,
        PrimitiveValue::from(SC),
    ));
    obj.put(DataElement::new(
        tags::SOP_INSTANCE_UID,
        VR::UI,
        PrimitiveValue::from(uid),
    ));
    obj.put(DataElement::new(
        tags::PATIENT_COMMENTS,
        VR::LT,
        PrimitiveValue::from("x".repeat(size)),
    ));
    let meta = dicom_object::meta::FileMetaTableBuilder::new()
        .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
        .media_storage_sop_class_uid(SC)
        .media_storage_sop_instance_uid(uid)
        .build()
        .unwrap();
    let path = dir.join(format!("{uid}.dcm"));
    obj.with_exact_meta(meta).write_to_file(&path).unwrap();
    path
}

fn prepared(dir: &Path, uids: &[&str], size: usize) -> Vec<scu::Prepared> {
    uids.iter()
        .map(|u| scu::prepare(&sc_file(dir, u, size)).unwrap())
        .collect()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Opens an association with the scripted PACS at `port`, proposing Secondary Capture
/// and Verification.
async fn connect(port: u16) -> Client {
    let contexts = [
        (
            SC.to_string(),
            vec![uids::EXPLICIT_VR_LITTLE_ENDIAN.to_string()],
        ),
        (
            uids::VERIFICATION.to_string(),
            vec![uids::IMPLICIT_VR_LITTLE_ENDIAN.to_string()],
        ),
    ];
    Client::connect(&Request {
        host: "127.0.0.1",
        port,
        called_ae: "PACS",
        calling_ae: "DULI",
        contexts: &contexts,
        tls: None,
    })
    .await
    .unwrap()
}

/// A PACS that answers the first C-STORE twice with Success and the second with A700: the
/// second file is not reported stored, and its push is not acknowledged.
#[test]
fn a_duplicate_answer_does_not_stand_for_the_next_file() {
    let dir = temp_dir("dup-answer");
    let files = prepared(dir.path(), &["1.2.3.4.1", "1.2.3.4.2"], 100);
    let (port, pacs) = scripted_pacs(Some(16_384), |c| {
        let (pc, first, _) = c.request().unwrap();
        c.answer(pc, &Command::store_rsp(&first, Status::SUCCESS))
            .unwrap();
        c.answer(pc, &Command::store_rsp(&first, Status::SUCCESS))
            .unwrap();
        if let Ok((pc, second, _)) = c.request() {
            let _ = c.answer(pc, &Command::store_rsp(&second, Status(0xA700)));
        }
        c.until_closed();
    });
    let results = runtime().block_on(scu::send_files(&target(port), "DULI", files));
    pacs.join().unwrap();
    assert!(matches!(results[0].outcome, Ok(0)), "{:?}", results[0]);
    assert!(
        !matches!(results[1].outcome, Ok(s) if Status(s).is_ok()),
        "{:?}",
        results[1]
    );
    assert!(
        !matches!(duli::deliver::pacs::outcome(&results), Delivery::Acked),
        "{results:?}"
    );
}

/// A response whose Message ID Being Responded To is not the request's fails the file.
#[test]
fn a_response_to_another_message_id_fails_the_file() {
    let dir = temp_dir("wrong-id");
    let files = prepared(dir.path(), &["1.2.3.5.1"], 100);
    let (port, pacs) = scripted_pacs(Some(16_384), |c| {
        let (pc, rq, _) = c.request().unwrap();
        let mut rsp = Command::store_rsp(&rq, Status::SUCCESS);
        rsp.message_id_being_responded_to = rq.message_id.map(|id| id.wrapping_add(1));
        c.answer(pc, &rsp).unwrap();
        c.until_closed();
    });
    let results = runtime().block_on(scu::send_files(&target(port), "DULI", files));
    pacs.join().unwrap();
    assert!(results[0].outcome.is_err(), "{:?}", results[0]);
    assert!(
        matches!(duli::deliver::pacs::outcome(&results), Delivery::Failed(_)),
        "{results:?}"
    );
}

/// A C-ECHO-RSP, or a C-STORE-RSP naming another instance, does not answer a C-STORE.
#[test]
fn a_response_of_another_kind_or_instance_does_not_answer() {
    for wrong in ["echo", "instance", "context"] {
        let (port, pacs) = scripted_pacs(Some(16_384), move |c| {
            let (pc, rq, _) = c.request().unwrap();
            let rsp = match wrong {
                "echo" => Command::echo_rsp(&rq, Status::SUCCESS),
                "instance" => {
                    let mut r = Command::store_rsp(&rq, Status::SUCCESS);
                    r.affected_sop_instance_uid = Some("1.2.3.6.99".into());
                    r
                }
                _ => Command::store_rsp(&rq, Status::SUCCESS),
            };
            let on = if wrong == "context" { pc + 2 } else { pc };
            c.answer(on, &rsp).unwrap();
            c.until_closed();
        });
        let rt = runtime();
        let zeros = ZeroDataSet::new();
        let got = rt.block_on(async {
            let mut client = connect(port).await;
            let rq = Command::store_rq(7, SC, "1.2.3.6.1", Priority::Medium);
            client.request(1, &rq, Some(zeros.data_set())).await
        });
        drop(rt);
        pacs.join().unwrap();
        assert!(
            matches!(got, Err(ClientError::Unmatched(_))),
            "{wrong}: {got:?}"
        );
    }
}

/// A data set of 64 zero bytes in a file of its own, as the SCU streams data sets.
struct ZeroDataSet {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl ZeroDataSet {
    fn new() -> ZeroDataSet {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ds");
        std::fs::write(&path, [0u8; 64]).unwrap();
        ZeroDataSet { _dir: dir, path }
    }

    fn data_set(&self) -> scu::DataSet<'_> {
        scu::DataSet {
            path: &self.path,
            held: None,
            offset: 0,
            len: 64,
        }
    }
}

/// The longest a trickling peer may hold a request or a release: the response deadline
/// and some slack for a loaded test machine.
fn bound() -> Duration {
    TIMEOUT + Duration::from_secs(10)
}

/// A peer that answers a C-STORE with a trickle of 1-byte data set PDVs (or of 1-byte
/// command fragments never marked last), one every 2 s, is given up on within the bound.
#[test]
fn a_trickled_answer_fails_the_request_within_its_deadline() {
    for kind in [PDataValueType::Data, PDataValueType::Command] {
        let trickled = kind.clone();
        let (port, pacs) = scripted_pacs(Some(16_384), move |c| {
            let (pc, _, _) = c.request().unwrap();
            while c.pdv(pc, trickled.clone(), &[0], false).is_ok() {
                std::thread::sleep(Duration::from_secs(2));
            }
        });
        let rt = runtime();
        let started = Instant::now();
        let zeros = ZeroDataSet::new();
        let got = rt.block_on(async {
            let mut client = connect(port).await;
            let rq = Command::store_rq(1, SC, "1.2.3.7.1", Priority::Medium);
            let request = client.request(1, &rq, Some(zeros.data_set()));
            tokio::time::timeout(bound(), request).await
        });
        drop(rt);
        let took = started.elapsed();
        pacs.join().unwrap();
        assert!(
            matches!(got, Ok(Err(_))),
            "{kind:?}: not given up within {:?}: {got:?}",
            bound()
        );
        assert!(took < bound(), "{kind:?}: {took:?}");
    }
}

/// A peer that answers A-RELEASE-RQ with a trickle of data PDVs instead of A-RELEASE-RP:
/// the release gives up within the bound and aborts the association.
#[test]
fn a_trickled_release_gives_up_and_aborts() {
    let (port, pacs) = scripted_pacs(Some(16_384), |c| {
        let pdu = c.read_pdu().unwrap();
        assert!(matches!(pdu, Pdu::ReleaseRQ), "{pdu:?}");
        c.stream
            .set_read_timeout(Some(Duration::from_millis(10)))
            .unwrap();
        loop {
            if c.pdv(1, PDataValueType::Data, &[0], false).is_err() {
                return None;
            }
            match c.read_pdu() {
                Ok(pdu) => return Some(pdu),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    });
    let rt = runtime();
    let started = Instant::now();
    let got = rt.block_on(async {
        let client = connect(port).await;
        tokio::time::timeout(bound(), client.release()).await
    });
    drop(rt);
    let took = started.elapsed();
    let last = pacs.join().unwrap();
    assert!(matches!(got, Ok(Err(ClientError::Timeout(_)))), "{got:?}");
    assert!(took < bound(), "{took:?}");
    assert!(matches!(last, Some(Pdu::AbortRQ { .. })), "{last:?}");
}

/// A PACS announcing a Maximum Length Received of 1 byte is sent PDUs of the smallest
/// length honoured (1024 bytes, 1018 of data each), not one PDU per byte.
#[test]
fn a_maximum_length_of_one_byte_is_raised() {
    let dir = temp_dir("max-length-1");
    let files = prepared(dir.path(), &["1.2.3.8.1"], 6000);
    let len = files[0].len as usize;
    let (port, pacs) = scripted_pacs(Some(1), |c| {
        let (pc, rq, data) = c.request().unwrap();
        c.answer(pc, &Command::store_rsp(&rq, Status::SUCCESS))
            .unwrap();
        c.until_closed();
        (data.len(), std::mem::take(&mut c.data_pdvs))
    });
    let results = runtime().block_on(scu::send_files(&target(port), "DULI", files));
    let (received, pdvs) = pacs.join().unwrap();
    assert!(matches!(results[0].outcome, Ok(0)), "{:?}", results[0]);
    assert_eq!(received, len);
    let (last, full) = pdvs.split_last().unwrap();
    assert!(full.iter().all(|n| *n == 1018), "{pdvs:?}");
    assert!(*last <= 1018 && *last > 0, "{pdvs:?}");
    assert_eq!(pdvs.len(), len.div_ceil(1018));
}

/// A C-MOVE whose requester drops its connection after the first pending response: the
/// instances already sent are an export, recorded with the tally so far and marked as
/// ended early. The requester is a raw peer (it must vanish mid-operation); the move
/// destination is a scripted PACS that answers the first C-STORE and holds the second.
#[test]
fn a_move_whose_requester_goes_away_is_audited_with_its_partial_tally() {
    let (dest_port, dest) = scripted_pacs(Some(16_384), |c| {
        let (pc, rq, _) = c.request().unwrap();
        c.answer(pc, &Command::store_rsp(&rq, Status::SUCCESS))
            .unwrap();
        // The second C-STORE stays unanswered until the daemon lets go of the association.
        c.until_closed();
    });
    let mut d = Daemon::builder()
        .config(
            "dicom",
            "allowed_peers",
            r#"[{ae_title = "REQUESTER", permissions = ["echo", "move"]},
                {ae_title = "MODALITY", permissions = ["echo", "store"]}]"#,
        )
        .config(
            "pacs",
            "destinations",
            &format!(
                r#"[{{name = "dest", ae_title = "DEST", host = "127.0.0.1", port = {dest_port}, move = true}}]"#
            ),
        )
        .start();
    let study = "1.2.826.0.1.3680043.10.1.77";
    let proposal = |id, abstract_syntax| raw_peer::Proposal {
        id,
        abstract_syntax,
        transfer_syntaxes: &[raw_peer::EXPLICIT_LE],
    };
    let raw_peer::Outcome::Accepted(mut modality) = raw_peer::RawPeer::associate(
        d.dicom_addr(),
        "MODALITY",
        DULI_AET,
        &[proposal(1, hostile_peer::DX)],
        &[],
    )
    .unwrap() else {
        panic!("MODALITY refused");
    };
    for n in 1..=3 {
        let ids = hostile_peer::Ids {
            sop: format!("{study}.1.{n}"),
            study: study.into(),
            series: format!("{study}.1"),
        };
        let data = hostile_peer::dx(&ids, b"", b"EARLY^END");
        let rq = Command::store_rq(n, hostile_peer::DX, &ids.sop, Priority::Medium);
        let rsp = modality.request(1, &rq, Some(&data)).unwrap();
        assert_eq!(rsp.status, Some(Status::SUCCESS), "{rsp:?}");
    }
    modality.release().unwrap();

    let raw_peer::Outcome::Accepted(mut requester) = raw_peer::RawPeer::associate(
        d.dicom_addr(),
        "REQUESTER",
        DULI_AET,
        &[proposal(1, uids::STUDY_ROOT_QR_MOVE)],
        &[],
    )
    .unwrap() else {
        panic!("REQUESTER refused");
    };
    let mut identifier = hostile_peer::el(0x0008, 0x0052, b"CS", b"STUDY");
    identifier.extend(hostile_peer::el(0x0020, 0x000D, b"UI", study.as_bytes()));
    let rq = Command::move_rq(1, uids::STUDY_ROOT_QR_MOVE, Priority::Medium, "DEST");
    requester.send(1, &rq, Some(&identifier)).unwrap();
    let pending = requester.command().unwrap();
    assert_eq!(pending.status, Some(Status::PENDING), "{pending:?}");
    assert_eq!(pending.completed_sub_operations, Some(1), "{pending:?}");
    drop(requester);
    dest.join().unwrap();

    assert!(d.terminate(Duration::from_secs(30)).is_some());
    let store = duli::store::Store::open(d.data_dir()).unwrap();
    let audit = duli::audit::Audit::open(&store).unwrap();
    let records = audit.records(0, 10_000).unwrap();
    let exports: Vec<_> = records
        .iter()
        .filter(|r| r.action == duli::audit::Action::Transfer && r.actor == "ae:REQUESTER")
        .collect();
    assert_eq!(exports.len(), 1, "{records:#?}");
    let export = exports[0];
    assert!(!export.success, "{export:?}");
    assert_eq!(export.object, study, "{export:?}");
    assert!(export.detail.contains("ended early"), "{export:?}");
    assert!(export.detail.contains("1 completed"), "{export:?}");
    assert!(export.detail.contains("of 3"), "{export:?}");
}

/// DCMTK's storescp told to abort the association after each C-STORE request, before its
/// answer: the push is dropped (sent in full, not answered), which the delivery worker
/// counts towards telling a message the PACS cannot take from a PACS that is down; a
/// PACS not listening at all is only failed.
#[test]
fn a_pacs_that_aborts_after_the_request_drops_the_push_and_one_not_listening_fails_it() {
    if which("storescp").is_none() {
        return skip("storescp absent");
    }
    let dir = temp_dir("abort-after");
    let port = free_port();
    let Some(mut cmd) = dcmtk("storescp") else {
        return;
    };
    cmd.args([
        "-aet",
        "PACS",
        "-od",
        dir.path().to_str().unwrap(),
        "--abort-after",
    ])
    .arg(port.to_string());
    let mut scp = Background::spawn("storescp", &mut cmd, &dir.path().join("log.log")).unwrap();
    scp.wait_for_port(loopback(port), READY_TIMEOUT).unwrap();
    let files = prepared(dir.path(), &["1.2.3.9.1"], 100);
    let results = runtime().block_on(scu::send_files(&target(port), "DULI", files));
    match duli::deliver::pacs::outcome(&results) {
        Delivery::Dropped(why) => assert!(why.contains("no answer to the C-STORE"), "{why}"),
        other => panic!("{other:?}: {results:?}"),
    }
    drop(scp);
    let files = prepared(dir.path(), &["1.2.3.9.2"], 100);
    let results = runtime().block_on(scu::send_files(&target(free_port()), "DULI", files));
    assert!(
        matches!(duli::deliver::pacs::outcome(&results), Delivery::Failed(_)),
        "{results:?}"
    );
}
