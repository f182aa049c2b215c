//! The Query/Retrieve SCP against real peers: DCMTK findscu/movescu/getscu/storescp,
//! pynetdicom (a second, independent client, with C-GET role selection and C-CANCEL) and
//! Orthanc as the hospital PACS.

mod common;

use common::*;
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One fixture instance as make_qr_set.py describes it.
type Rec = BTreeMap<String, Value>;

fn s(r: &Rec, k: &str) -> String {
    match &r[k] {
        Value::String(v) => v.clone(),
        v => v.to_string(),
    }
}

fn json_lines(out: &ToolOutput) -> Vec<Value> {
    out.stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Writes the fixture set and sends it to the daemon with storescu.
fn load_fixture(d: &Daemon, dir: &Path) -> Option<Vec<Rec>> {
    require_tool("findscu")?;
    let out = python_tool("make_qr_set.py", &[dir.to_str().unwrap()])?;
    out.assert_success("make_qr_set.py");
    let recs: Vec<Rec> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 6);
    let files: Vec<PathBuf> = recs.iter().map(|r| PathBuf::from(s(r, "path"))).collect();
    d.storescu("STORESCU", &[], &files)?
        .assert_success("storescu");
    Some(recs)
}

fn text(obj: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<String> {
    obj.element_opt(tag).unwrap().map(|e| {
        e.to_str()
            .map(|v| v.trim_end_matches([' ', '\0']).to_string())
            .unwrap_or_default()
    })
}

fn values(objs: &[DefaultDicomObject], tag: dicom_core::Tag) -> BTreeSet<String> {
    objs.iter().filter_map(|o| text(o, tag)).collect()
}

/// The data set of a Part 10 file (everything after the file meta group).
fn data_set(path: &Path) -> Vec<u8> {
    let bytes = read(path);
    let mut cursor = std::io::Cursor::new(&bytes[128..]);
    dicom_object::meta::FileMetaTable::from_reader(&mut cursor).unwrap();
    bytes[128 + cursor.position() as usize..].to_vec()
}

#[test]
fn findscu_at_each_level_answers_field_by_field() {
    let d = Daemon::start();
    let dir = temp_dir("qr-fixture");
    let Some(recs) = load_fixture(&d, dir.path()) else {
        return;
    };
    let first = &recs[0];
    let study_a = s(first, "study");
    let study_b = s(&recs[4], "study");
    let study_c = s(&recs[5], "study");

    // STUDY level, name wildcard (case-insensitive for PN), with empty return keys.
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "PatientName=do*",
            "StudyInstanceUID",
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "AccessionNumber",
            "StudyDate",
            "StudyTime",
            "StudyDescription",
            "ReferringPhysicianName",
            "ModalitiesInStudy",
            "NumberOfStudyRelatedSeries",
            "NumberOfStudyRelatedInstances",
            "InstitutionName",
        ],
    );
    assert_eq!(rsp.len(), 2, "Doe and Dorian");
    for o in &rsp {
        let uid = text(o, tags::STUDY_INSTANCE_UID).unwrap();
        let r = recs.iter().find(|r| s(r, "study") == uid).unwrap();
        for (tag, key) in [
            (tags::PATIENT_NAME, "PatientName"),
            (tags::PATIENT_ID, "PatientID"),
            (tags::PATIENT_BIRTH_DATE, "PatientBirthDate"),
            (tags::PATIENT_SEX, "PatientSex"),
            (tags::ACCESSION_NUMBER, "AccessionNumber"),
            (tags::STUDY_DATE, "StudyDate"),
            (tags::STUDY_TIME, "StudyTime"),
            (tags::STUDY_DESCRIPTION, "StudyDescription"),
            (tags::REFERRING_PHYSICIAN_NAME, "ReferringPhysicianName"),
        ] {
            assert_eq!(text(o, tag).as_deref(), Some(s(r, key).as_str()), "{key}");
        }
        // Requested but unknown here: returned, empty.
        assert_eq!(text(o, tags::INSTITUTION_NAME).as_deref(), Some(""));
        let in_study: Vec<&Rec> = recs.iter().filter(|x| s(x, "study") == uid).collect();
        let series: BTreeSet<String> = in_study.iter().map(|x| s(x, "series")).collect();
        let modalities: BTreeSet<String> = in_study.iter().map(|x| s(x, "modality")).collect();
        assert_eq!(
            text(o, tags::NUMBER_OF_STUDY_RELATED_INSTANCES),
            Some(in_study.len().to_string())
        );
        assert_eq!(
            text(o, tags::NUMBER_OF_STUDY_RELATED_SERIES),
            Some(series.len().to_string())
        );
        let got: BTreeSet<String> = text(o, tags::MODALITIES_IN_STUDY)
            .unwrap()
            .split('\\')
            .map(String::from)
            .collect();
        assert_eq!(got, modalities);
    }
    // Case rules: SH is case-sensitive, PN is not.
    assert!(d
        .findscu(
            "-S",
            &["QueryRetrieveLevel=STUDY", "AccessionNumber=acc001"]
        )
        .is_empty());
    assert_eq!(
        d.findscu("-S", &["QueryRetrieveLevel=STUDY", "PatientName=DOE^JOHN"])
            .len(),
        1
    );
    // `?` matches one character.
    assert_eq!(
        values(
            &d.findscu(
                "-S",
                &[
                    "QueryRetrieveLevel=STUDY",
                    "PatientID=P00?",
                    "StudyInstanceUID"
                ]
            ),
            tags::STUDY_INSTANCE_UID
        ),
        BTreeSet::from([study_a.clone(), study_b.clone(), study_c.clone()])
    );

    // Date ranges, open and closed, and a time range.
    let dates = |range: &str| {
        values(
            &d.findscu(
                "-S",
                &[
                    "QueryRetrieveLevel=STUDY",
                    &format!("StudyDate={range}"),
                    "StudyInstanceUID",
                ],
            ),
            tags::STUDY_INSTANCE_UID,
        )
    };
    assert_eq!(
        dates("20240101-20241231"),
        BTreeSet::from([study_a.clone(), study_b.clone()])
    );
    assert_eq!(dates("-20240131"), BTreeSet::from([study_a.clone()]));
    assert_eq!(dates("20250101-"), BTreeSet::from([study_c.clone()]));
    assert_eq!(dates("20240620"), BTreeSet::from([study_b.clone()]));
    let times = values(
        &d.findscu(
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                "StudyTime=1000-1500",
                "StudyInstanceUID",
            ],
        ),
        tags::STUDY_INSTANCE_UID,
    );
    assert_eq!(times, BTreeSet::from([study_a.clone(), study_b.clone()]));

    // UID list.
    let listed = values(
        &d.findscu(
            "-S",
            &[
                "QueryRetrieveLevel=STUDY",
                &format!("StudyInstanceUID={study_a}\\{study_c}"),
            ],
        ),
        tags::STUDY_INSTANCE_UID,
    );
    assert_eq!(listed, BTreeSet::from([study_a.clone(), study_c.clone()]));

    // SERIES level by accession number: the SR and OT results are series of their own.
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=SERIES",
            "AccessionNumber=ACC001",
            "SeriesInstanceUID",
            "Modality",
            "SeriesNumber",
            "SeriesDescription",
            "NumberOfSeriesRelatedInstances",
        ],
    );
    assert_eq!(rsp.len(), 3);
    for o in &rsp {
        let uid = text(o, tags::SERIES_INSTANCE_UID).unwrap();
        let members: Vec<&Rec> = recs.iter().filter(|r| s(r, "series") == uid).collect();
        let r = members[0];
        assert_eq!(text(o, tags::MODALITY), Some(s(r, "modality")));
        assert_eq!(text(o, tags::SERIES_NUMBER), Some(s(r, "series_number")));
        assert_eq!(
            text(o, tags::SERIES_DESCRIPTION),
            Some(s(r, "series_description"))
        );
        assert_eq!(
            text(o, tags::NUMBER_OF_SERIES_RELATED_INSTANCES),
            Some(members.len().to_string())
        );
        assert_eq!(text(o, tags::ACCESSION_NUMBER).as_deref(), Some("ACC001"));
    }
    assert_eq!(
        values(&rsp, tags::MODALITY),
        BTreeSet::from(["DX".into(), "SR".into(), "OT".into()])
    );

    // IMAGE level: every instance of the study with SOP class and instance number; the SR
    // found again by its SOP class and by accession number.
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            &format!("StudyInstanceUID={study_a}"),
            "SeriesInstanceUID",
            "SOPInstanceUID",
            "SOPClassUID",
            "InstanceNumber",
        ],
    );
    assert_eq!(rsp.len(), 4);
    for o in &rsp {
        let sop = text(o, tags::SOP_INSTANCE_UID).unwrap();
        let r = recs.iter().find(|r| s(r, "sop") == sop).unwrap();
        assert_eq!(text(o, tags::SOP_CLASS_UID), Some(s(r, "sop_class")));
        assert_eq!(
            text(o, tags::INSTANCE_NUMBER),
            Some(s(r, "instance_number"))
        );
        assert_eq!(text(o, tags::SERIES_INSTANCE_UID), Some(s(r, "series")));
    }
    let sr = recs.iter().find(|r| s(r, "modality") == "SR").unwrap();
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=IMAGE",
            "AccessionNumber=ACC001",
            "SOPClassUID=1.2.840.10008.5.1.4.1.1.88.33",
            "SOPInstanceUID",
        ],
    );
    assert_eq!(
        values(&rsp, tags::SOP_INSTANCE_UID),
        BTreeSet::from([s(sr, "sop")])
    );
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "AccessionNumber=ACC001",
            "ModalitiesInStudy=SR",
            "StudyInstanceUID",
        ],
    );
    assert_eq!(
        values(&rsp, tags::STUDY_INSTANCE_UID),
        BTreeSet::from([study_a.clone()])
    );

    // Patient Root, PATIENT level with counts.
    let rsp = d.findscu(
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            "PatientID=P001",
            "PatientName",
            "NumberOfPatientRelatedStudies",
            "NumberOfPatientRelatedInstances",
        ],
    );
    assert_eq!(rsp.len(), 1);
    assert_eq!(
        text(&rsp[0], tags::PATIENT_NAME).as_deref(),
        Some("Doe^John")
    );
    assert_eq!(
        text(&rsp[0], tags::NUMBER_OF_PATIENT_RELATED_STUDIES).as_deref(),
        Some("1")
    );
    assert_eq!(
        text(&rsp[0], tags::NUMBER_OF_PATIENT_RELATED_INSTANCES).as_deref(),
        Some("4")
    );

    // pynetdicom as a second client: a UTF-8 name query.
    let Some(out) = python_tool(
        "qr_client.py",
        &[
            "find",
            &d.dicom_port.to_string(),
            "STUDY",
            "PatientName=Mül*",
            "StudyInstanceUID=",
        ],
    ) else {
        return;
    };
    out.assert_success("qr_client.py find");
    let lines = json_lines(&out);
    assert_eq!(lines.len(), 2, "{}", out.combined());
    assert_eq!(lines[0]["identifier"]["PatientName"], "Müller^Jörg");
    assert_eq!(lines[0]["identifier"]["StudyInstanceUID"], study_c.as_str());
    assert_eq!(lines[1]["status"], 0);

    // Each query is in the audit trail, with who and how many.
    let records = audit_records(d);
    let finds: Vec<&::duli::audit::Record> = records
        .iter()
        .filter(|r| r.action == ::duli::audit::Action::Query)
        .collect();
    assert!(finds.len() >= 14, "{finds:?}");
    assert!(finds.iter().any(|r| r.actor == "ae:FINDSCU"
        && r.source == "127.0.0.1"
        && r.detail.contains("(0010,0010)=do*: 2 match(es)")));
    assert!(finds
        .iter()
        .any(|r| r.actor == "ae:QRSCU" && r.detail.contains("1 match(es)")));
}

/// Stops the daemon and reads its audit trail.
fn audit_records(mut d: Daemon) -> Vec<::duli::audit::Record> {
    d.stop_and_read_audit()
}

/// Starts DCMTK storescp as a move destination; returns it with its port and folder.
fn storescp(aet: &str) -> Option<(Background, u16, TestDir)> {
    let port = free_port();
    let dir = temp_dir("storescp");
    let mut cmd = dcmtk("storescp")?;
    cmd.args([
        "-aet",
        aet,
        "-od",
        dir.path().to_str().unwrap(),
        "+xa",
        "+B",
    ])
    .arg(port.to_string());
    let log = dir.path().join("storescp.log");
    let mut bg = Background::spawn("storescp", &mut cmd, &log).unwrap();
    bg.wait_for_port(loopback(port), READY_TIMEOUT).unwrap();
    Some((bg, port, dir))
}

fn received(dir: &Path) -> BTreeMap<String, PathBuf> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_none_or(|e| e != "log"))
        .map(|p| {
            let o = open_file(&p).unwrap();
            (text(&o, tags::SOP_INSTANCE_UID).unwrap(), p)
        })
        .collect()
}

/// DCMTK getscu (Study Root, files written as received) of `study` into `out`, with
/// `extra` options (e.g. its proposed transfer syntaxes).
fn getscu_study(port: &str, out: &Path, study: &str, extra: &[&str]) -> ToolOutput {
    let key = format!("StudyInstanceUID={study}");
    let mut args = vec!["-v", "+B", "-S", "-aet", "GETSCU", "-aec", DULI_AET];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["-od", out.to_str().unwrap()]);
    args.extend_from_slice(&["-k", "QueryRetrieveLevel=STUDY", "-k", &key]);
    args.extend_from_slice(&["127.0.0.1", port]);
    run_dcmtk("getscu", &args).unwrap()
}

fn destinations(name: &str, aet: &str, port: u16, allow_move: bool) -> String {
    format!(
        "[{{name = \"{name}\", ae_title = \"{aet}\", host = \"127.0.0.1\", port = {port}, move = {allow_move}}}]"
    )
}

#[test]
fn movescu_and_getscu_retrieve_every_instance_byte_identical() {
    if which("movescu").is_none() || which("storescp").is_none() {
        return skip("movescu/storescp absent");
    }
    let Some((_scp, scp_port, scp_dir)) = storescp("STORESCP") else {
        return;
    };
    let d = Daemon::builder()
        .config(
            "pacs",
            "destinations",
            &destinations("scp", "STORESCP", scp_port, true),
        )
        .start();
    let dir = temp_dir("qr-fixture");
    let Some(recs) = load_fixture(&d, dir.path()) else {
        return;
    };
    let study = s(&recs[0], "study");
    let in_study: Vec<&Rec> = recs.iter().filter(|r| s(r, "study") == study).collect();
    let port = d.dicom_port.to_string();

    // C-MOVE with movescu.
    let out = movescu_study(d.dicom_port, "STORESCP", &study).unwrap();
    out.assert_success("movescu");
    assert!(
        out.stderr.contains("Final Move Response (Success)")
            || out.stdout.contains("Final Move Response (Success)"),
        "{}",
        out.combined()
    );
    let got = received(scp_dir.path());
    assert_eq!(got.len(), in_study.len());
    for r in &in_study {
        let path = &got[&s(r, "sop")];
        assert_eq!(
            data_set(path),
            data_set(Path::new(&s(r, "path"))),
            "{}",
            s(r, "sop")
        );
    }

    // Unknown destination: A801.
    let Some(out) = python_tool("qr_client.py", &["move", &port, "NOWHERE", &study]) else {
        return;
    };
    let lines = json_lines(&out);
    assert_eq!(
        lines.last().unwrap()["status"],
        0xA801,
        "{}",
        out.combined()
    );

    // Counts through pynetdicom's C-MOVE: pending with remaining, final without.
    let out = python_tool("qr_client.py", &["move", &port, "STORESCP", &study]).unwrap();
    let lines = json_lines(&out);
    let n = in_study.len() as u64;
    assert_eq!(lines.len() as u64, n, "{}", out.combined());
    for (i, l) in lines[..lines.len() - 1].iter().enumerate() {
        assert_eq!(l["status"], 0xFF00);
        assert_eq!(l["NumberOfCompletedSuboperations"], i as u64 + 1);
        assert_eq!(l["NumberOfRemainingSuboperations"], n - i as u64 - 1);
    }
    let last = lines.last().unwrap();
    assert_eq!(last["status"], 0);
    assert_eq!(last["NumberOfCompletedSuboperations"], n);
    assert_eq!(last["NumberOfFailedSuboperations"], 0);
    assert!(last.get("NumberOfRemainingSuboperations").is_none());

    // C-GET with getscu.
    // Then by a peer that lists JPEG Lossless first (getscu +xs): the sub-operations go in
    // the uncompressed syntax it also offers, every instance completed as stored.
    for extra in [&[][..], &["+xs"][..]] {
        let get_dir = temp_dir("getscu");
        let out = getscu_study(&port, get_dir.path(), &study, extra);
        out.assert_success(&format!("getscu {extra:?}"));
        let all = out.combined();
        assert!(
            all.contains(&format!("Number of Completed Suboperations : {n}")),
            "{all}"
        );
        assert!(
            all.contains("Number of Failed Suboperations    : 0"),
            "{all}"
        );
        let got = received(get_dir.path());
        assert_eq!(got.len(), in_study.len());
        for r in &in_study {
            assert_eq!(
                data_set(&got[&s(r, "sop")]),
                data_set(Path::new(&s(r, "path")))
            );
        }
    }

    // C-GET with pynetdicom (role selection), data sets as received on the wire.
    let py_dir = temp_dir("pyget");
    let out = python_tool(
        "qr_client.py",
        &["get", &port, py_dir.path().to_str().unwrap(), &study],
    )
    .unwrap();
    out.assert_success("qr_client.py get");
    let lines = json_lines(&out);
    assert_eq!(lines.last().unwrap()["status"], 0, "{}", out.combined());
    assert_eq!(lines.last().unwrap()["NumberOfCompletedSuboperations"], n);
    for r in &in_study {
        let wire = read(&py_dir.path().join(format!("{}.bin", s(r, "sop"))));
        assert_eq!(wire, data_set(Path::new(&s(r, "path"))));
    }

    // Every retrieve is audited as an export of the study, the refused one as a failure.
    let records = audit_records(d);
    let exports: Vec<&::duli::audit::Record> = records
        .iter()
        .filter(|r| r.action == ::duli::audit::Action::Transfer)
        .collect();
    assert_eq!(exports.len(), 6, "{exports:?}");
    assert!(exports
        .iter()
        .any(|r| !r.success && r.detail.contains("NOWHERE")));
    // Each names who received the instances: a C-MOVE's destination, a C-GET's requestor.
    for r in &exports {
        if r.detail.contains("C-GET") {
            assert_eq!(r.destination, r.actor, "{r:?}");
        } else {
            assert!(r.destination.starts_with("ae:"), "{r:?}");
            assert_ne!(r.destination, r.actor, "{r:?}");
        }
    }
    assert!(exports.iter().any(|r| r.destination == "ae:NOWHERE"));
    assert_eq!(
        exports
            .iter()
            .filter(|r| r.success && r.object == study && r.detail.contains("4 completed"))
            .count(),
        5
    );
}

/// Runs `qr_client.py get` (pynetdicom) of `study` with `extra` options; its lines.
fn py_get(d: &Daemon, study: &str, extra: &[&str]) -> Vec<Value> {
    let get_dir = temp_dir("pyget-early");
    let port = d.dicom_port.to_string();
    let mut args = vec!["get", &port, get_dir.path().to_str().unwrap(), study];
    args.extend_from_slice(extra);
    json_lines(&python_tool("qr_client.py", &args).unwrap())
}

/// The C-GET export records of an audit trail.
fn get_exports(records: &[::duli::audit::Record]) -> Vec<&::duli::audit::Record> {
    records
        .iter()
        .filter(|r| r.action == ::duli::audit::Action::Transfer && r.detail.contains("C-GET"))
        .collect()
}

/// A C-GET requester that aborts the association at the 2nd C-STORE sub-operation: the
/// retrieve is recorded with every instance it never sent counted failed, so the counts
/// add up to the instances of the study.
#[test]
fn a_c_get_stopped_by_an_abort_counts_every_unsent_instance_failed() {
    let d = Daemon::start();
    let dir = temp_dir("qr-get-abort");
    let Some(recs) = load_fixture(&d, dir.path()) else {
        return;
    };
    let study = s(&recs[0], "study");
    let n = recs.iter().filter(|r| s(r, "study") == study).count();
    assert!(n >= 3, "{n} instances");
    let lines = py_get(&d, &study, &["--abort-at", "2"]);
    assert!(lines.iter().all(|l| l["status"] != 0), "{lines:?}");
    let records = audit_records(d);
    let exports = get_exports(&records);
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert!(!exports[0].success);
    let counts = format!("1 completed, {} failed, 0 warning of {n}", n - 1);
    assert!(exports[0].detail.contains(&counts), "{exports:?}");
}

/// A C-GET requester that leaves the 2nd C-STORE unanswered past the response timeout
/// (120 s, so ignored by default: `cargo test -p duli --test qr -- --ignored`): the final
/// response counts every instance not sent failed and lists each in the Failed SOP
/// Instance UID List.
#[test]
#[ignore = "waits for the 120 s C-STORE response timeout"]
fn a_c_get_whose_store_times_out_fails_every_remaining_instance() {
    let d = Daemon::start();
    let dir = temp_dir("qr-get-stall");
    let Some(recs) = load_fixture(&d, dir.path()) else {
        return;
    };
    let study = s(&recs[0], "study");
    let in_study: Vec<&Rec> = recs.iter().filter(|r| s(r, "study") == study).collect();
    let n = in_study.len();
    assert!(n >= 3, "{n} instances");
    let lines = py_get(&d, &study, &["--stall-at", "2", "125"]);
    let last = lines.last().unwrap();
    assert_eq!(last["status"], 0xB000, "{lines:?}");
    assert_eq!(last["NumberOfCompletedSuboperations"], 1, "{lines:?}");
    assert_eq!(last["NumberOfFailedSuboperations"], n - 1, "{lines:?}");
    let failed = last["identifier"]["FailedSOPInstanceUIDList"].to_string();
    let listed = in_study
        .iter()
        .filter(|r| failed.contains(&s(r, "sop")))
        .count();
    assert_eq!(listed, n - 1, "{failed}");
}

#[test]
fn c_cancel_stops_a_move() {
    if which("storescp").is_none() {
        return skip("storescp absent");
    }
    let Some((_scp, scp_port, scp_dir)) = storescp("STORESCP") else {
        return;
    };
    let d = Daemon::builder()
        .config(
            "pacs",
            "destinations",
            &destinations("scp", "STORESCP", scp_port, true),
        )
        .start();
    let dir = temp_dir("cancel");
    let script = std::fs::read_to_string(repo_root().join("tests/tools/make_dx.py")).unwrap();
    let Some(mut cmd) = python_script(
        &script,
        &[
            dir.path().to_str().unwrap(),
            "--count",
            "60",
            "--rows",
            "512",
            "--cols",
            "512",
        ],
    ) else {
        return;
    };
    let out = run(&mut cmd, Duration::from_secs(120));
    out.assert_success("make_dx.py");
    let study = out
        .stdout
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .nth(2)
        .unwrap()
        .to_string();
    let files = dicom_files(dir.path());
    d.storescu("STORESCU", &[], &files)
        .unwrap()
        .assert_success("storescu");
    let out = python_tool(
        "qr_client.py",
        &[
            "move",
            &d.dicom_port.to_string(),
            "STORESCP",
            &study,
            "--cancel-after",
            "2",
        ],
    )
    .unwrap();
    out.assert_success("qr_client.py move --cancel-after 2");
    let lines = json_lines(&out);
    let last = lines.last().unwrap();
    assert_eq!(last["status"], 0xFE00, "{}", out.combined());
    let completed = last["NumberOfCompletedSuboperations"].as_u64().unwrap();
    let remaining = last["NumberOfRemainingSuboperations"].as_u64().unwrap();
    assert!(remaining > 0, "{last}");
    assert_eq!(completed + remaining, 60, "{last}");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(received(scp_dir.path()).len() as u64, completed);
}

#[test]
fn peers_without_qr_permission_are_refused() {
    let d = Daemon::builder()
        .config(
            "dicom",
            "allowed_peers",
            r#"[{ae_title = "STORESCU", permissions = ["echo", "store"]}, {ae_title = "FINDSCU", permissions = ["echo"]}, {ae_title = "QRSCU", permissions = ["find"]}]"#,
        )
        .start();
    let dir = temp_dir("qr-fixture");
    let Some(recs) = load_fixture(&d, dir.path()) else {
        return;
    };
    let port = d.dicom_port.to_string();
    // findscu proposes only FIND, which this peer may not use: no context, no answers.
    let out = run_dcmtk(
        "findscu",
        &[
            "-S",
            "-aet",
            "FINDSCU",
            "-aec",
            DULI_AET,
            "-k",
            "QueryRetrieveLevel=STUDY",
            "127.0.0.1",
            &port,
        ],
    )
    .unwrap();
    assert!(!out.success(), "{}", out.combined());
    assert!(
        !out.combined().contains("Find Response"),
        "{}",
        out.combined()
    );
    // A peer with find may query but not move.
    let Some(out) = python_tool("qr_client.py", &["find", &port, "STUDY", "PatientID=P001"]) else {
        return;
    };
    assert_eq!(json_lines(&out).len(), 2, "{}", out.combined());
    let out = python_tool(
        "qr_client.py",
        &["move", &port, "ANY", &s(&recs[0], "study")],
    )
    .unwrap();
    assert!(!out.success(), "{}", out.combined());
}

#[test]
fn orthanc_queries_and_moves_the_result_series() {
    let Some(orthanc) = Orthanc::start() else {
        return;
    };
    let d = Daemon::builder()
        .config(
            "pacs",
            "destinations",
            &destinations("pacs", &orthanc.aet, orthanc.dicom_port, true),
        )
        .start();
    // The appliance as one of Orthanc's modalities.
    let body = serde_json::json!({"AET": DULI_AET, "Host": "127.0.0.1", "Port": d.dicom_port});
    let r = http_request(
        orthanc.http_addr(),
        "PUT",
        "/modalities/duli",
        Some(("application/json", &serde_json::to_vec(&body).unwrap())),
        Duration::from_secs(30),
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let dir = temp_dir("qr-fixture");
    let Some(recs) = load_fixture(&d, dir.path()) else {
        return;
    };
    // Orthanc looks for the result series by accession number, then retrieves them.
    let q = orthanc.post_json(
        "/modalities/duli/query",
        &serde_json::json!({
            "Level": "Series",
            "Query": {"AccessionNumber": "ACC001", "Modality": "SR\\OT", "SeriesInstanceUID": ""}
        }),
    );
    let id = q["ID"].as_str().unwrap().to_string();
    let answers = orthanc.get_json(&format!("/queries/{id}/answers?expand"));
    assert_eq!(answers.as_array().unwrap().len(), 2, "{answers}");
    orthanc.post_json(
        &format!("/queries/{id}/retrieve"),
        &serde_json::json!({"TargetAet": orthanc.aet, "Synchronous": true}),
    );
    let mut got = BTreeSet::new();
    for inst in orthanc.instances() {
        let tags = orthanc.get_json(&format!("/instances/{inst}/simplified-tags"));
        got.insert(tags["SOPInstanceUID"].as_str().unwrap().to_string());
    }
    let want: BTreeSet<String> = recs
        .iter()
        .filter(|r| ["SR", "OT"].contains(&s(r, "modality").as_str()))
        .map(|r| s(r, "sop"))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn move_falls_back_to_explicit_little_endian_when_the_stored_syntax_is_refused() {
    let Some(samples) = samples_dir() else { return };
    if which("storescp").is_none() {
        return skip("storescp absent");
    }
    // storescp without +xa accepts uncompressed syntaxes only.
    let port = free_port();
    let scp_dir = temp_dir("storescp-plain");
    let Some(mut cmd) = dcmtk("storescp") else {
        return;
    };
    cmd.args([
        "-aet",
        "PLAIN",
        "-od",
        scp_dir.path().to_str().unwrap(),
        "+B",
    ])
    .arg(port.to_string());
    let mut scp = Background::spawn("storescp", &mut cmd, &scp_dir.path().join("log.log")).unwrap();
    scp.wait_for_port(loopback(port), READY_TIMEOUT).unwrap();
    let d = Daemon::builder()
        .config(
            "pacs",
            "destinations",
            &destinations("plain", "PLAIN", port, true),
        )
        .start();
    let jls = samples.join("dicom/jpeg-ls-lossless/NORMAL_02.dcm");
    let plain = samples.join("dicom/explicit-le/NORMAL_02.dcm");
    d.storescu("MODALITY", &["-xt"], std::slice::from_ref(&jls))
        .unwrap()
        .assert_success("storescu -xt");
    let sop = ::duli::scu::prepare(&jls).unwrap().sop_instance;
    let out = movescu_instance(d.dicom_port, "PLAIN", &sop).unwrap();
    out.assert_success("movescu");
    let got = received(scp_dir.path());
    let path = got
        .get(&sop)
        .unwrap_or_else(|| panic!("not received: {}", out.combined()));
    let received = open_file(path).unwrap();
    assert_eq!(
        received.meta().transfer_syntax.trim_end_matches('\0'),
        "1.2.840.10008.1.2.1"
    );
    let pixels = |o: &DefaultDicomObject| {
        o.element(tags::PIXEL_DATA)
            .unwrap()
            .to_bytes()
            .unwrap()
            .to_vec()
    };
    assert_eq!(
        pixels(&received),
        pixels(&open_file(&plain).unwrap()),
        "lossless decode gives the original pixels"
    );
}

/// The character set fixture: one DX study each (make_dx.py), stored over DICOM:
/// `Conceição^Maria` in UTF-8 (patient ID AP0000), `Gonçalves^José` in Latin-1 (BP0000)
/// and `Wałęsa^Łukasz` in UTF-8 (CP0000; Latin-1 cannot carry it). Returns their records
/// by patient ID.
fn load_charset_fixture(d: &Daemon, dir: &Path) -> Option<BTreeMap<String, Rec>> {
    load_named_studies(
        d,
        dir,
        &[
            ("A", "ISO_IR 192", "Conceição^Maria", "RAIO-X TÓRAX"),
            ("B", "ISO_IR 100", "Gonçalves^José", "TÓRAX PA"),
            ("C", "ISO_IR 192", "Wałęsa^Łukasz", "RTG KLATKI PIERSIOWEJ"),
        ],
    )
}

/// One DX study per `(prefix, character set, patient name, study description)`, written by
/// pydicom in that character set and stored with storescu; their records by patient ID.
fn load_named_studies(
    d: &Daemon,
    dir: &Path,
    studies: &[(&str, &str, &str, &str)],
) -> Option<BTreeMap<String, Rec>> {
    require_tool("findscu")?;
    let mut recs = BTreeMap::new();
    let mut files = Vec::new();
    for &(prefix, charset, name, description) in studies {
        let out_dir = dir.join(prefix);
        let out = python_tool(
            "make_dx.py",
            &[
                out_dir.to_str().unwrap(),
                "--prefix",
                prefix,
                "--charset",
                charset,
                "--name",
                name,
                "--description",
                description,
            ],
        )?;
        out.assert_success("make_dx.py");
        let line: Vec<&str> = out.stdout.split_whitespace().collect();
        assert_eq!(line.len(), 3, "{}", out.stdout);
        files.push(PathBuf::from(line[0]));
        let pid = format!("{prefix}P0000");
        let rec: Rec = [
            ("PatientName", name.to_string()),
            ("PatientID", pid.clone()),
            ("AccessionNumber", format!("{prefix}ACC00000")),
            ("StudyInstanceUID", line[2].to_string()),
            ("StudyDescription", description.to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), Value::String(v)))
        .collect();
        recs.insert(pid, rec);
    }
    d.storescu("STORESCU", &[], &files)?
        .assert_success("storescu");
    Some(recs)
}

/// Return keys of the character set queries (the answers carry (0008,0005) anyway).
const CHARSET_KEYS: [&str; 5] = [
    "QueryRetrieveLevel=STUDY",
    "PatientID",
    "AccessionNumber",
    "StudyInstanceUID",
    "StudyDescription",
];

/// Runs `qr_client.py find` (pynetdicom) at STUDY level with `args`; returns its lines.
fn qr_client_find(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let port = d.dicom_port.to_string();
    let mut all = vec!["find", port.as_str(), "STUDY"];
    all.extend_from_slice(args);
    let out = python_tool("qr_client.py", &all).unwrap();
    out.assert_success("qr_client.py find");
    json_lines(&out)
}

/// [`qr_client_find`] with `args` and the return keys of the fixture records.
fn find_returning(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&[
        "PatientID=",
        "AccessionNumber=",
        "StudyInstanceUID=",
        "StudyDescription=",
    ]);
    qr_client_find(d, &all)
}

/// One findscu answer against its fixture record, field by field, and the character set
/// it declares.
fn assert_answer(o: &DefaultDicomObject, r: &Rec, charset: &str) {
    for (tag, key) in [
        (tags::PATIENT_NAME, "PatientName"),
        (tags::PATIENT_ID, "PatientID"),
        (tags::ACCESSION_NUMBER, "AccessionNumber"),
        (tags::STUDY_INSTANCE_UID, "StudyInstanceUID"),
        (tags::STUDY_DESCRIPTION, "StudyDescription"),
    ] {
        assert_eq!(text(o, tag).as_deref(), Some(s(r, key).as_str()), "{key}");
    }
    assert_eq!(
        text(o, tags::SPECIFIC_CHARACTER_SET).as_deref(),
        Some(charset)
    );
}

/// The same for a pynetdicom answer line.
fn assert_json_answer(line: &Value, r: &Rec, charset: &str) {
    let id = &line["identifier"];
    for key in [
        "PatientName",
        "PatientID",
        "AccessionNumber",
        "StudyInstanceUID",
        "StudyDescription",
    ] {
        assert_eq!(id[key], s(r, key).as_str(), "{key} in {line}");
    }
    assert_eq!(id["SpecificCharacterSet"], charset, "{line}");
}

#[test]
fn find_without_character_set_reads_utf8_or_latin1_and_answers_in_utf8() {
    let d = Daemon::start();
    let dir = temp_dir("qr-charset");
    let Some(recs) = load_charset_fixture(&d, dir.path()) else {
        return;
    };
    let with = |name: &str| -> Vec<String> {
        let mut keys = vec![format!("PatientName={name}")];
        keys.extend(CHARSET_KEYS.iter().map(|k| k.to_string()));
        keys
    };
    // findscu from a UTF-8 shell: UTF-8 bytes, no (0008,0005). The study stored in UTF-8
    // and the one stored in Latin-1 both match; the answers are in UTF-8.
    let rsp = d.findscu("-S", &with("Conceição*"));
    assert_eq!(rsp.len(), 1);
    assert_answer(&rsp[0], &recs["AP0000"], "ISO_IR 192");
    let rsp = d.findscu("-S", &with("gonçalves^josé"));
    assert_eq!(
        rsp.len(),
        1,
        "PN matches case-insensitively, beyond ASCII too"
    );
    assert_answer(&rsp[0], &recs["BP0000"], "ISO_IR 192");
    // Latin-1 bytes from findscu, still without (0008,0005).
    use std::os::unix::ffi::OsStringExt;
    let latin1 = std::ffi::OsString::from_vec(b"PatientName=Concei\xe7\xe3o*".to_vec());
    let mut keys = vec![latin1];
    keys.extend(CHARSET_KEYS.iter().map(std::ffi::OsString::from));
    let rsp = d.findscu("-S", &keys);
    assert_eq!(rsp.len(), 1);
    assert_answer(&rsp[0], &recs["AP0000"], "ISO_IR 192");
    // An ASCII-only answer declares no character set.
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "PatientID=CP0000",
            "PatientName=",
        ],
    );
    assert_eq!(rsp.len(), 1);
    assert_eq!(
        text(&rsp[0], tags::PATIENT_NAME).as_deref(),
        Some("Wałęsa^Łukasz")
    );
    assert_eq!(
        text(&rsp[0], tags::SPECIFIC_CHARACTER_SET).as_deref(),
        Some("ISO_IR 192")
    );
    let rsp = d.findscu("-S", &["QueryRetrieveLevel=STUDY", "PatientID=CP0000"]);
    assert_eq!(rsp.len(), 1);
    assert_eq!(text(&rsp[0], tags::SPECIFIC_CHARACTER_SET), None);

    // pynetdicom, Latin-1 bytes without (0008,0005), the same query three times on one
    // association: three answers, one warning.
    let find = |args: &[&str]| qr_client_find(&d, args);
    let lines = find(&[
        "PatientName=Gonçalves*",
        "PatientID=",
        "AccessionNumber=",
        "StudyInstanceUID=",
        "StudyDescription=",
        "--charset",
        "none",
        "--bytes",
        "latin-1",
        "--repeat",
        "3",
    ]);
    assert_eq!(lines.len(), 6, "{lines:?}");
    for pair in lines.chunks(2) {
        assert_json_answer(&pair[0], &recs["BP0000"], "ISO_IR 192");
        assert_eq!(pair[1]["status"], 0);
    }
    // Bytes that are neither ASCII nor UTF-8 nor a name we hold: no match, no failure.
    let lines = find(&[
        "PatientName=fffe2a",
        "PatientID=",
        "--charset",
        "none",
        "--bytes",
        "hex",
    ]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 0);

    let log = d.log();
    let warnings = log
        .lines()
        .filter(|l| l.contains("without Specific Character Set"))
        .count();
    // findscu: three associations with non-ASCII keys; pynetdicom: two.
    assert_eq!(warnings, 5, "one warning per association:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn find_with_character_set_matches_studies_stored_in_another() {
    let d = Daemon::start();
    let dir = temp_dir("qr-charset");
    let Some(recs) = load_charset_fixture(&d, dir.path()) else {
        return;
    };
    // findscu, ISO_IR 100 and Latin-1 bytes: matches the study stored in UTF-8; the answer
    // echoes ISO_IR 100 (and findscu's file decodes with it).
    use std::os::unix::ffi::OsStringExt;
    let mut keys = vec![
        std::ffi::OsString::from("SpecificCharacterSet=ISO_IR 100"),
        std::ffi::OsString::from_vec(b"PatientName=CONCEI\xc7\xc3O^MARIA".to_vec()),
    ];
    keys.extend(CHARSET_KEYS.iter().map(std::ffi::OsString::from));
    let rsp = d.findscu("-S", &keys);
    assert_eq!(rsp.len(), 1);
    assert_answer(&rsp[0], &recs["AP0000"], "ISO_IR 100");

    // pynetdicom, ISO_IR 192 and UTF-8: matches the study stored in Latin-1.
    let find = |args: &[&str]| qr_client_find(&d, args);
    let lines = find_returning(&d, &["PatientName=Gonçalves^José"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_json_answer(&lines[0], &recs["BP0000"], "ISO_IR 192");
    // pynetdicom, ISO_IR 100: the Latin-1 study answers in ISO_IR 100; the Polish name
    // cannot be written in Latin-1, so that answer is in UTF-8.
    let lines = find_returning(&d, &["PatientName=*", "--charset", "ISO_IR 100"]);
    assert_eq!(lines.len(), 4, "{lines:?}");
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["identifier"]["PatientID"] == id)
            .unwrap_or_else(|| panic!("{id} in {lines:?}"))
    };
    assert_json_answer(by_id("AP0000"), &recs["AP0000"], "ISO_IR 100");
    assert_json_answer(by_id("BP0000"), &recs["BP0000"], "ISO_IR 100");
    assert_json_answer(by_id("CP0000"), &recs["CP0000"], "ISO_IR 192");
    // Latin-1 bytes declared as UTF-8: taken at their word, no match, no failure.
    let lines = find(&["PatientName=Gonçalves*", "PatientID=", "--bytes", "latin-1"]);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], 0);
    assert!(!d.log().contains("without Specific Character Set"));
}

/// PS3.5 Annex H and I: a Japanese and a Korean name in ISO 2022 code extensions, written
/// by pydicom. They are indexed as Unicode (an ASCII or UTF-8 query finds them, the answer
/// is UTF-8), a query in the same code extensions matches them exactly, and the answer
/// comes back in the query's code extensions when they can carry it (else UTF-8) — each
/// answer decoded by pydicom.
#[test]
fn names_in_iso_2022_code_extensions_are_indexed_matched_and_answered_in_them() {
    let d = Daemon::start();
    let dir = temp_dir("qr-iso2022");
    let yamada = "Yamada^Tarou=山田^太郎=やまだ^たろう";
    let hong = "Hong^Gildong=洪^吉洞=홍^길동";
    let Some(recs) = load_named_studies(
        &d,
        dir.path(),
        &[
            ("J", "\\ISO 2022 IR 87", yamada, "CHEST PA"),
            ("K", "\\ISO 2022 IR 149", hong, "CHEST AP"),
        ],
    ) else {
        return;
    };
    // UTF-8 query with an ASCII prefix: found, answered in UTF-8.
    let lines = find_returning(&d, &["PatientName=Yamada*"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_json_answer(&lines[0], &recs["JP0000"], "ISO_IR 192");
    // UTF-8 query with the Hangul of the phonetic group.
    let lines = find_returning(&d, &["PatientName=*홍^길동"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_json_answer(&lines[0], &recs["KP0000"], "ISO_IR 192");
    // The query itself in ISO 2022 IR 87, the whole name: an exact match, and the answer in
    // the query's code extensions.
    let name_key = format!("PatientName={yamada}");
    let lines = find_returning(&d, &["--charset", "\\ISO 2022 IR 87", &name_key]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let id = &lines[0]["identifier"];
    assert_eq!(id["PatientName"], yamada, "{lines:?}");
    assert_eq!(id["PatientID"], "JP0000");
    assert_eq!(
        id["SpecificCharacterSet"],
        serde_json::json!(["", "ISO 2022 IR 87"])
    );
    // Everyone, asked in ISO 2022 IR 87: the Korean name cannot be written in JIS X 0208,
    // so that answer is in UTF-8.
    let lines = find_returning(&d, &["PatientName=*", "--charset", "\\ISO 2022 IR 87"]);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let by_id = |id: &str| {
        lines
            .iter()
            .find(|l| l["identifier"]["PatientID"] == id)
            .unwrap_or_else(|| panic!("{id} in {lines:?}"))
    };
    assert_eq!(by_id("JP0000")["identifier"]["PatientName"], yamada);
    assert_eq!(
        by_id("JP0000")["identifier"]["SpecificCharacterSet"],
        serde_json::json!(["", "ISO 2022 IR 87"])
    );
    assert_json_answer(by_id("KP0000"), &recs["KP0000"], "ISO_IR 192");
    assert!(!d.log().contains("panicked"));
}

/// PS3.5 6.2.1: trailing empty components and component groups may be left out, so a
/// name stored as `Doe^John^^^` is found by `DOE^JOHN`, and a one-group query finds a
/// three-group name by its alphabetic group — through the index narrowing and the
/// matcher, with pynetdicom and findscu.
#[test]
fn names_match_without_trailing_delimiters_and_by_component_group() {
    let d = Daemon::start();
    let dir = temp_dir("qr-pn-forms");
    let Some(recs) = load_named_studies(
        &d,
        dir.path(),
        &[
            ("N", "ISO_IR 100", "Doe^John^^^", "CHEST PA"),
            (
                "K",
                "ISO_IR 192",
                "Hong^Gildong=洪^吉洞=홍^길동",
                "CHEST AP",
            ),
        ],
    ) else {
        return;
    };
    let lines = find_returning(&d, &["PatientName=DOE^JOHN"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines[0]["identifier"]["PatientID"], "NP0000", "{lines:?}");
    let lines = find_returning(&d, &["PatientName=Hong^Gildong"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_json_answer(&lines[0], &recs["KP0000"], "ISO_IR 192");
    let lines = find_returning(&d, &["PatientName=Hong^Gildong^"]);
    assert_eq!(lines.len(), 2, "{lines:?}");
    // DCMTK findscu, the stored form of the other name: still one match.
    let mut keys = vec!["PatientName=Doe^John^".to_string()];
    keys.extend(CHARSET_KEYS.iter().map(|k| k.to_string()));
    let rsp = d.findscu("-S", &keys);
    assert_eq!(rsp.len(), 1);
    assert_eq!(text(&rsp[0], tags::PATIENT_ID).as_deref(), Some("NP0000"));
}

#[test]
fn back_to_back_finds_on_one_association_are_all_answered() {
    // findscu --repeat sends each query as soon as the previous final response arrives:
    // the next request must never meet "another operation is in progress" (A700).
    let d = Daemon::start();
    let dir = temp_dir("qr-fixture");
    if load_fixture(&d, dir.path()).is_none() {
        return;
    }
    let out_dir = temp_dir("findscu");
    let Some(mut cmd) = dcmtk("findscu") else {
        return;
    };
    cmd.args(["-S", "--repeat", "200", "-X", "-od"])
        .arg(out_dir.path())
        .args(["-aet", "FINDSCU", "-aec", DULI_AET])
        .args(["-k", "QueryRetrieveLevel=STUDY", "-k", "PatientID=P001"])
        .args(["-k", "StudyInstanceUID"])
        .args(["127.0.0.1", &d.dicom_port.to_string()]);
    run(&mut cmd, TOOL_TIMEOUT).assert_success("findscu --repeat 200");
    let answers = std::fs::read_dir(out_dir.path()).unwrap().count();
    assert_eq!(answers, 200, "one match per query");
    let log = d.log();
    assert!(!log.contains("another operation is in progress"), "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("STUDY level (0010,0020): 1 match(es), completed"))
            .count(),
        200
    );
}

#[test]
fn patient_identifiers_and_query_values_stay_out_of_the_log() {
    // The log is copied into the diagnostics bundle: a stored study and a C-FIND on its
    // patient's keys leave the UIDs, key tags and counts there, never a patient's values
    // (the audit trail records them).
    let d = Daemon::start();
    let dir = temp_dir("phi");
    let Some(files) = common::dx::make_dx(
        dir.path(),
        1,
        1,
        &["--prefix", "PHI-CANARY-", "--name", "PHI-CANARY^X"],
    ) else {
        return;
    };
    if require_tool("findscu").is_none() {
        return;
    }
    let (path, _, study) = files[0].clone();
    d.storescu("STORESCU", &[], &[path])
        .unwrap()
        .assert_success("storescu");
    let complete = format!("study {study} complete");
    assert!(
        d.log_once_it_holds(&complete, Duration::from_secs(30))
            .contains(&complete),
        "{}",
        d.log()
    );
    let answers = d.findscu(
        "-P",
        &[
            "QueryRetrieveLevel=PATIENT",
            "PatientID=PHI-CANARY-P0000",
            "PatientName=PHI-CANARY^X",
            "PatientBirthDate=20230101",
        ],
    );
    assert_eq!(answers.len(), 1);
    let log = d.log_once_it_holds("1 match(es), completed", Duration::from_secs(10));
    for phi in ["PHI-CANARY", "20230101"] {
        assert!(!log.contains(phi), "{phi} in the log:\n{log}");
    }
    assert!(
        log.contains("PATIENT level (0010,0010) (0010,0020) (0010,0030): 1 match(es), completed"),
        "{log}"
    );
    let audit = audit_records(d);
    assert!(
        audit
            .iter()
            .any(|r| r.detail.contains("(0010,0020)=PHI-CANARY-P0000")
                && r.detail.contains("1 match(es), completed")),
        "{audit:?}"
    );
}

/// The status of each response line of `qr_client.py`.
fn statuses(lines: &[Value]) -> Vec<i64> {
    lines
        .iter()
        .map(|l| l["status"].as_i64().unwrap_or(-1))
        .collect()
}

#[test]
fn a_find_matching_more_than_the_cap_answers_the_first_and_asks_to_narrow_it() {
    // Three studies, at most two matches per C-FIND: a universal query gets two pending
    // answers, then A700 with an Error Comment; a query matching exactly two succeeds.
    let d = DaemonBuilder::default()
        .env("DULI_DICOM__MAX_FIND_MATCHES", "2")
        .start();
    let dir = temp_dir("qr-fixture");
    if load_fixture(&d, dir.path()).is_none() {
        return;
    }
    let lines = qr_client_find(&d, &["StudyInstanceUID=", "PatientID="]);
    assert_eq!(statuses(&lines), [0xFF00, 0xFF00, 0xA700], "{lines:?}");
    assert_eq!(
        lines[2]["ErrorComment"], "more than 2 matches; narrow the query",
        "{lines:?}"
    );
    // The first ones in the documented order (patient ID, then date).
    assert_eq!(lines[0]["identifier"]["PatientID"], "P001", "{lines:?}");
    assert_eq!(lines[1]["identifier"]["PatientID"], "P002", "{lines:?}");
    let lines = qr_client_find(&d, &["StudyInstanceUID=", "PatientID=P001\\P003"]);
    assert_eq!(statuses(&lines), [0xFF00, 0xFF00, 0x0000], "{lines:?}");
    // The association serves on after the refusal: findscu on a new one still works, and
    // the log and the audit trail say what happened.
    let rsp = d.findscu(
        "-S",
        &[
            "QueryRetrieveLevel=STUDY",
            "PatientID=P002",
            "StudyInstanceUID",
        ],
    );
    assert_eq!(rsp.len(), 1);
    let log = d.log();
    assert!(
        log.contains("2 match(es), failed: more than 2 matches; narrow the query"),
        "{log}"
    );
    let records = audit_records(d);
    assert!(
        records.iter().any(|r| !r.success
            && r.action == ::duli::audit::Action::Query
            && r.detail
                .contains("2 match(es), failed: more than 2 matches")),
        "{records:?}"
    );
}

#[test]
fn names_sent_decomposed_match_names_stored_composed() {
    // The fixture stores "Müller^Jörg" composed (NFC); a workstation that sends the name
    // decomposed (u + U+0308, as macOS input often does) finds the same study, by exact
    // name and by prefix.
    let d = Daemon::start();
    let dir = temp_dir("qr-fixture");
    if load_fixture(&d, dir.path()).is_none() {
        return;
    }
    for key in [
        "PatientName=Mu\u{308}ller^Jo\u{308}rg",
        "PatientName=MU\u{308}L*",
    ] {
        let lines = find_returning(&d, &[key]);
        assert_eq!(statuses(&lines), [0xFF00, 0x0000], "{key}: {lines:?}");
        assert_eq!(lines[0]["identifier"]["PatientID"], "P003", "{lines:?}");
    }
}

/// One explicit VR little endian element of a C-FIND identifier (even-padded).
fn identifier_element(group: u16, element: u16, vr: &[u8; 2], value: &str) -> Vec<u8> {
    let mut v = value.as_bytes().to_vec();
    if v.len() % 2 == 1 {
        v.push(if vr == b"UI" { 0 } else { b' ' });
    }
    let mut out = Vec::new();
    out.extend_from_slice(&group.to_le_bytes());
    out.extend_from_slice(&element.to_le_bytes());
    out.extend_from_slice(vr);
    out.extend_from_slice(&(v.len() as u16).to_le_bytes());
    out.extend(v);
    out
}

/// A C-FIND cut off by an A-ABORT after its first answer is audited all the same, with
/// the number of matches sent and marked as ended early: answers that left the box never
/// go without their record.
#[test]
fn a_find_cut_off_by_an_abort_is_audited_with_the_matches_sent() {
    use ::duli::dimse::command::{self, Command, Priority};
    use ::duli::dimse::uids::{EXPLICIT_VR_LITTLE_ENDIAN, STUDY_ROOT_QR_FIND};
    use ::duli::model::{InstanceRecord, StudyRecord, StudyState};
    use dicom_ul::association::client::ClientAssociationOptions;
    use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

    // Enough studies in the index that the matches are still going out when the abort
    // arrives (their files are not needed to answer a C-FIND).
    const STUDIES: usize = 2000;
    let root = temp_dir("qr-find-abort");
    let data = root.path().join("data");
    {
        let store = ::duli::store::Store::open(&data).unwrap();
        for i in 0..STUDIES {
            let study = format!("1.2.826.0.1.3680043.10.99.{i}");
            let inst = InstanceRecord {
                sop_instance_uid: format!("{study}.1"),
                study_instance_uid: study.clone(),
                path: format!("files/none/{i}.dcm"),
                ..Default::default()
            };
            let attrs = StudyRecord {
                patient_id: format!("P{i:05}"),
                ..Default::default()
            };
            store.commit_instance(&inst, &attrs).unwrap();
            store
                .transition_to_error(&study, &[StudyState::Receiving], "fixture")
                .unwrap();
        }
        store.flush_blocking().unwrap();
    }
    let d = Daemon::builder().data_dir(&data).start();

    let mut assoc = ClientAssociationOptions::new()
        .calling_ae_title("CUTOFF")
        .called_ae_title(DULI_AET)
        .with_presentation_context(STUDY_ROOT_QR_FIND, vec![EXPLICIT_VR_LITTLE_ENDIAN])
        .read_timeout(Duration::from_secs(30))
        .establish(d.dicom_addr())
        .unwrap();
    let pc = assoc.presentation_contexts()[0].id;
    let mut identifier = identifier_element(0x0008, 0x0052, b"CS", "STUDY");
    identifier.extend(identifier_element(0x0010, 0x0020, b"LO", ""));
    identifier.extend(identifier_element(0x0020, 0x000D, b"UI", ""));
    let rq = Command::find_rq(1, STUDY_ROOT_QR_FIND, Priority::Medium);
    for (value_type, bytes) in [
        (PDataValueType::Command, command::encode(&rq)),
        (PDataValueType::Data, identifier),
    ] {
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc,
                    value_type,
                    is_last: true,
                    data: bytes,
                }],
            })
            .unwrap();
    }
    // The first pending response, then A-ABORT.
    let mut bytes = Vec::new();
    let first = 'read: loop {
        match assoc.receive().unwrap() {
            Pdu::PData { data } => {
                for v in data {
                    if v.value_type == PDataValueType::Command {
                        bytes.extend_from_slice(&v.data);
                        if v.is_last {
                            break 'read command::decode(&bytes).unwrap();
                        }
                    }
                }
            }
            other => panic!("got {other:?}"),
        }
    };
    assert_eq!(first.status.map(|s| s.0), Some(0xFF00), "{first:?}");
    assoc.abort().unwrap();

    let records = audit_records(d);
    let finds: Vec<_> = records
        .iter()
        .filter(|r| r.actor == "ae:CUTOFF" && r.action == ::duli::audit::Action::Query)
        .collect();
    assert_eq!(finds.len(), 1, "{finds:?}");
    assert!(!finds[0].success, "{finds:?}");
    let detail = &finds[0].detail;
    let sent: usize = detail
        .split(": ")
        .last()
        .and_then(|tail| tail.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {detail:?}"));
    assert!(
        (1..STUDIES).contains(&sent) && detail.contains(" match(es) sent, ended early ("),
        "{detail}"
    );
}
