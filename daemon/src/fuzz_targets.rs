//! One entry point per parser that takes bytes from outside the box: the `fuzz/` crate
//! drives each with libFuzzer, and `daemon/tests/fuzz_corpus.rs` replays every corpus and
//! crash file through the same functions in the ordinary test suite.
//!
//! Each entry takes arbitrary bytes, runs the parser the daemon runs on that input (with
//! its real limits), and follows a successful parse with the next step the daemon takes, so
//! that a crash anywhere on the path is found. Results are discarded: the contract under
//! test is "never panics, never allocates by a number the input wrote, always ends".
//! Targets are listed by [`TARGETS`] and run by name through [`run`].

use std::io::{Cursor, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};

use dicom_core::VR;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu};

use crate::config::Config;
use crate::deliver::hl7::{ack::Ack, mllp};
use crate::dimse::{assembler::Assembler, command};
use crate::infer::manifest::Manifest;
use crate::qr::{identifier, matching, query};
use crate::ul::framing::PduReader;
use crate::ul::negotiate;

/// A fuzz entry point: takes any bytes, returns nothing, must never panic or hang.
pub type Entry = fn(&[u8]);

/// Every target: its name (also the folder of its corpus under `fuzz/corpus/`) and entry.
pub const TARGETS: &[(&str, Entry)] = &[
    ("pdu", pdu),
    ("dimse", dimse),
    ("store_header", store_header),
    ("guard_parser", guard_parser),
    ("find_identifier", find_identifier),
    ("commitment_report", commitment_report),
    ("pixels", pixels),
    ("jpeg", jpeg),
    ("hl7_ack", hl7_ack),
    ("console_json", console_json),
    ("firmware_bundle", firmware_bundle),
    ("model_pack", model_pack),
    ("model_manifest", model_manifest),
    ("endorsement", endorsement),
    ("config_toml", config_toml),
];

/// Runs the target called `name` on `data`; `false` when no target has that name.
pub fn run(name: &str, data: &[u8]) -> bool {
    match TARGETS.iter().find(|(n, _)| *n == name) {
        Some((_, f)) => {
            f(data);
            true
        }
        None => false,
    }
}

/// Largest P-DATA PDU the SCP advertises by default.
const MAX_PDU: u32 = 64 * 1024;

/// Polls a future that never waits (it reads from memory) to completion.
fn ready<F: std::future::Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = Context::from_waker(Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        Poll::Ready(out) => Some(out),
        Poll::Pending => None,
    }
}

fn default_config() -> &'static Config {
    static CONFIG: OnceLock<Config> = OnceLock::new();
    CONFIG.get_or_init(|| {
        Config::load(None, std::iter::empty()).unwrap_or_else(|e| {
            panic!("built-in defaults must load: {e}");
        })
    })
}

/// A scratch path per process (and thread) named by `tag`, in a folder that exists.
fn scratch_path(tag: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("duli-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&d);
        d
    });
    dir.join(format!("{tag}-{:?}", std::thread::current().id()))
}

/// A scratch file per process (and thread) for parsers that read from a path.
fn scratch_file(tag: &str, data: &[u8]) -> Option<PathBuf> {
    let path = scratch_path(tag);
    let mut f = std::fs::File::create(&path).ok()?;
    f.write_all(data).ok()?;
    Some(path)
}

/// The DICOM upper layer: PDUs read as from a socket (length checked before any
/// allocation), an A-ASSOCIATE-RQ negotiated against the default policy, and the P-DATA
/// values fed to the DIMSE assembler of the accepted contexts.
pub fn pdu(data: &[u8]) {
    let policy = crate::receive::policy::policy(default_config());
    let mut reader = PduReader::new(MAX_PDU);
    let mut stream: &[u8] = data;
    let mut assembler = Assembler::new((1u8..=255).step_by(2));
    for _ in 0..64 {
        let Some(Ok(pdu)) = ready(reader.read(&mut stream)) else {
            return;
        };
        match pdu {
            Pdu::AssociationRQ(rq) => {
                if let Ok(acc) = negotiate::negotiate(&rq, IpAddr::V4(Ipv4Addr::LOCALHOST), &policy)
                {
                    assembler = Assembler::new(acc.contexts.iter().map(|c| c.id));
                }
            }
            Pdu::PData { data } => {
                for pdv in data {
                    if let Ok(Some(crate::dimse::assembler::Event::Command { command, .. })) =
                        assembler.feed(pdv)
                    {
                        let _ = command::encode(&command);
                    }
                }
            }
            _ => {}
        }
    }
}

/// DIMSE: the input split into P-DATA values (a header byte per value: bit 0 last, bit 1
/// command, the rest the context id; then a 16-bit length) fed to the assembler; each
/// command set decoded, and a decoded command encoded again.
pub fn dimse(data: &[u8]) {
    if let Ok(cmd) = command::decode(data) {
        let again = command::encode(&cmd);
        let _ = command::decode(&again);
    }
    let mut assembler = Assembler::new([1u8, 3, 5]).with_command_limit(16 * 1024);
    let mut rest = data;
    while rest.len() >= 3 {
        let flags = rest[0];
        let len = usize::from(u16::from_be_bytes([rest[1], rest[2]])).min(rest.len() - 3);
        let value = rest[3..3 + len].to_vec();
        rest = &rest[3 + len..];
        let pdv = PDataValue {
            presentation_context_id: (flags >> 2) | 1,
            value_type: if flags & 2 != 0 {
                PDataValueType::Command
            } else {
                PDataValueType::Data
            },
            is_last: flags & 1 != 0,
            data: value,
        };
        let _ = assembler.feed(pdv);
    }
}

/// The C-STORE path: the bounded pre-scan of a Part 10 stream, then the header parse the
/// store runs before it indexes an instance.
pub fn store_header(data: &[u8]) {
    if crate::dataset_guard::check_part10_bytes(data).is_err() {
        return;
    }
    if let Some(path) = scratch_file("store", data) {
        let _ = crate::store::header::read_header(&path);
    }
}

/// The pre-scan against the parser it protects: the first byte picks the encoding
/// (implicit VR little endian, explicit little endian, explicit big endian), the rest is a
/// data set. When [`crate::dataset_guard::check_dataset`] passes it, dicom-rs must read it
/// within the same bounds — sequences no deeper than
/// [`crate::dataset_guard::MAX_DEPTH`], no declared length beyond the bytes present —
/// or the two read the bytes differently, and this panics with where they part.
pub fn guard_parser(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let ts = match selector % 3 {
        0 => "1.2.840.10008.1.2",
        1 => "1.2.840.10008.1.2.1",
        _ => "1.2.840.10008.1.2.2",
    };
    if crate::dataset_guard::check_dataset(body, ts).is_err() {
        return;
    }
    if let Some(e) = parser_beyond_guard_bounds(body, ts) {
        panic!("the pre-scan passed a data set that dicom-rs reads beyond its bounds: {e}");
    }
}

/// Reads `body` token by token with dicom-rs's data set reader (the one `dicom-object`
/// builds objects with), checking each declared length against the bytes left before the
/// value is read, and the nesting of sequences; stops quietly at the parser's first error.
fn parser_beyond_guard_bounds(body: &[u8], ts_uid: &str) -> Option<String> {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_parser::dataset::{read::DataSetReader, DataToken};
    use std::cell::Cell;
    use std::rc::Rc;

    /// A byte source that tells how far it has been read.
    struct Counted<'a> {
        bytes: &'a [u8],
        pos: Rc<Cell<usize>>,
    }
    impl std::io::Read for Counted<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let at = self.pos.get().min(self.bytes.len());
            let n = buf.len().min(self.bytes.len() - at);
            buf[..n].copy_from_slice(&self.bytes[at..at + n]);
            self.pos.set(at + n);
            Ok(n)
        }
    }

    let ts = dicom_transfer_syntax_registry::TransferSyntaxRegistry.get(ts_uid)?;
    let pos = Rc::new(Cell::new(0usize));
    let source = Counted {
        bytes: body,
        pos: Rc::clone(&pos),
    };
    let reader = DataSetReader::new_with_ts(source, ts).ok()?;
    let beyond = |len: dicom_core::Length, what: &str| -> Option<String> {
        let left = body.len().saturating_sub(pos.get());
        match len.get() {
            Some(n) if n as usize > left => Some(format!(
                "{what} declares {n} bytes with {left} left (at byte {})",
                pos.get()
            )),
            _ => None,
        }
    };
    // Open sequences: `true` for a sequence of items (counted), `false` for fragments.
    let mut open: Vec<bool> = Vec::new();
    for token in reader {
        let Ok(token) = token else {
            return None;
        };
        match token {
            DataToken::SequenceStart { tag, len } => {
                open.push(true);
                let depth = open.iter().filter(|s| **s).count();
                if depth > crate::dataset_guard::MAX_DEPTH {
                    return Some(format!(
                        "sequence {tag} opens level {depth} (at byte {})",
                        pos.get()
                    ));
                }
                if let Some(e) = beyond(len, "a sequence") {
                    return Some(e);
                }
            }
            DataToken::PixelSequenceStart => open.push(false),
            DataToken::SequenceEnd => {
                open.pop();
            }
            DataToken::ItemStart { len } => {
                if let Some(e) = beyond(len, "an item") {
                    return Some(e);
                }
            }
            DataToken::ElementHeader(header) => {
                if let Some(e) = beyond(header.len, "an element") {
                    return Some(e);
                }
            }
            _ => {}
        }
    }
    None
}

/// C-FIND: the identifier pre-scanned and decoded in each transfer syntax a context may
/// carry, parsed for each information model, every key's matcher run against sample values,
/// and the response identifier encoded.
pub fn find_identifier(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let ts = match selector % 3 {
        0 => crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN,
        1 => crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN,
        _ => crate::dimse::uids::DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    };
    if crate::dataset_guard::check_dataset(body, ts).is_err() {
        return;
    }
    let Ok(obj) = identifier::decode_identifier(body, ts) else {
        return;
    };
    let samples = [
        String::from("DOE^JANE"),
        String::from("20260101"),
        String::from("1.2.826.0.1.3680043.8.498.1"),
        String::from("CR"),
        String::from("120000.000"),
    ];
    for model in [query::Model::PatientRoot, query::Model::StudyRoot] {
        if let Ok(q) = query::parse(&obj, model) {
            let _ = q.describe();
            for key in &q.keys {
                let _ = matching::matches(&key.matcher, key.vr, &samples);
            }
        }
    }
    for vr in [VR::PN, VR::DA, VR::TM, VR::DT, VR::UI, VR::LO, VR::CS] {
        if let Ok(text) = std::str::from_utf8(body) {
            let m = matching::parse(vr, text);
            let _ = matching::matches(&m, vr, &samples);
        }
    }
    let _ = identifier::encode_identifier(&obj, ts);
}

/// Storage Commitment: a PACS's N-EVENT-REPORT event information read in either
/// uncompressed syntax a context may carry (the first byte chooses), then handed to a
/// registry with one transaction waiting, as the SCP hands it.
pub fn commitment_report(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let ts = if selector % 2 == 0 {
        crate::dimse::uids::IMPLICIT_VR_LITTLE_ENDIAN
    } else {
        crate::dimse::uids::EXPLICIT_VR_LITTLE_ENDIAN
    };
    let Ok(report) = crate::dimse::commitment::parse_report(body, ts) else {
        return;
    };
    let registry = crate::deliver::commitment::Commitments::new();
    let reference = crate::dimse::commitment::Reference {
        sop_class: crate::dimse::uids::COMPREHENSIVE_SR.into(),
        sop_instance: "2.25.1".into(),
    };
    if let Ok(_waiting) = registry.register("PACS", &[reference]) {
        let _ = registry.report("PACS", &report);
    }
    if let Some(first) = report.failed.first() {
        let _ = crate::deliver::commitment::Verdict::describe(std::slice::from_ref(first));
    }
}

fn input_spec() -> &'static crate::infer::manifest::InputSpec {
    static SPEC: OnceLock<crate::infer::manifest::InputSpec> = OnceLock::new();
    SPEC.get_or_init(|| {
        let text = include_str!("../../models/pneumonia-xception/model.toml");
        let m: Manifest = toml::from_str(text)
            .unwrap_or_else(|e| panic!("the shipped model manifest must parse: {e}"));
        m.input
    })
}

/// The pixel pipeline from file bytes to the model's input tensor: a DICOM file through
/// the pre-scan, the header, the pixel budget, every transfer syntax's decoder, the display
/// mapping and the tensor; PNG and JPEG (and DICOM) through the console's upload path.
pub fn pixels(data: &[u8]) {
    const MAX_PIXELS: u64 = 4096 * 4096;
    let _ =
        crate::console::upload::prepare(data, "fuzz.dcm", "1.2.826.0.1.3680043.8.498", MAX_PIXELS);
    let Some(path) = scratch_file("pixels", data) else {
        return;
    };
    let Ok(image) = crate::infer::dicom_image::DicomImage::open(&path) else {
        return;
    };
    if image.check_pixel_budget(MAX_PIXELS).is_err() {
        return;
    }
    // The daemon decodes JPEG-LS and JPEG 2000 only in its confined child
    // (`decode_sandbox`). Both are fuzzed here by calling the child's own decode in
    // process, by the fuzzer and by the corpus replay of `make test` alike (where a `duli`
    // executable would otherwise take them out of reach). (JPEG 2000 was left out until
    // the OpenJPEG translation stopped freeing null code-block buffers, undefined
    // behaviour that builds with debug assertions stop at on any JPEG 2000 input:
    // vendor/openjp2/DULI-CHANGES.md.)
    let ts = image.transfer_syntax();
    if crate::infer::decode_sandbox::is_sandboxed(ts) {
        if let Ok(gray) = image.decode_in_process() {
            let _ = crate::infer::tensor::input_tensor(&gray, input_spec());
        }
        return;
    }
    if let Ok(gray) = image.display_image() {
        let _ = crate::infer::tensor::input_tensor(&gray, input_spec());
    }
}

/// JPEG files alone, as `duli infer` and the console's uploads read them: the format and
/// pixel budget from the header, the patched decoder (vendor/jpeg-decoder: upstream's
/// parser and Huffman decoding, the vectorised inverse DCT) and the tensor, with the
/// daemon's pixel budget. Unlike [`pixels`] it writes nothing to a file and opens no DICOM
/// reader, so every input reaches the JPEG decoder.
pub fn jpeg(data: &[u8]) {
    const MAX_PIXELS: u64 = 4096 * 4096;
    if let Ok(gray) = crate::infer::raster::decode_bytes(data, MAX_PIXELS) {
        let _ = crate::infer::tensor::input_tensor(&gray, input_spec());
    }
}

/// HL7: the MLLP frame decoder over the bytes a RIS sends back, and each frame parsed as
/// an ACK and checked against the control id we sent.
pub fn hl7_ack(data: &[u8]) {
    let mut decoder = mllp::Decoder::new(64 * 1024);
    decoder.push(data);
    for _ in 0..16 {
        match decoder.next_frame() {
            Ok(Some(frame)) => {
                if let Ok(ack) = Ack::parse(&frame) {
                    let _ = ack.expect_control_id("DULI0000000001");
                }
            }
            _ => break,
        }
    }
    let _ = Ack::parse(data);
}

/// Every JSON request body of the console API, decoded as its handler decodes it.
pub fn console_json(data: &[u8]) {
    crate::console::api::fuzz_bodies(data);
}

fn test_anchors() -> &'static duli_firmware::TrustAnchors {
    static ANCHORS: OnceLock<duli_firmware::TrustAnchors> = OnceLock::new();
    ANCHORS.get_or_init(|| {
        // A fixed test root (never a production key): the fuzzer cannot forge its
        // signatures, so it explores the header, manifest and endorsement checks.
        duli_firmware::TrustAnchors::from_roots(vec![duli_firmware::PublicKey([7u8; 32])])
    })
}

/// Firmware: the bundle header, the verifier (key, signature, manifest, payload size and
/// hash, streamed) and the manifest JSON the verifier parses once the signature holds.
pub fn firmware_bundle(data: &[u8]) {
    let _ = duli_firmware::bundle::RawHeader::decode(
        &mut Cursor::new(data),
        std::path::Path::new("fuzz"),
    );
    if let Some(path) = scratch_file("bundle", data) {
        let _ = duli_firmware::verify(&path, test_anchors());
    }
    if let Ok(m) = duli_firmware::Manifest::from_json(data) {
        let _ = m.check();
        let _ = m.payload_sha256();
    }
}

/// Model packs: the archive of a pack's payload, read for the model its `model.toml`
/// names, then unpacked into a new folder as the daemon puts a pack in service. Nothing
/// may be written outside that folder, whatever the archive's names and entry kinds.
pub fn model_pack(data: &[u8]) {
    let name = std::path::Path::new("fuzz.pack");
    let _ = crate::infer::pack::model_of(&mut Cursor::new(data), name);
    let room = scratch_path("pack");
    let into = room.join("into");
    let _ = std::fs::remove_dir_all(&room);
    if std::fs::create_dir_all(&into).is_err() {
        return;
    }
    let _ = crate::infer::pack::unpack(&mut Cursor::new(data), &into, name);
    let outside: Vec<_> = std::fs::read_dir(&room)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name())
                .filter(|n| n != "into")
                .collect()
        })
        .unwrap_or_default();
    assert!(
        outside.is_empty(),
        "a pack archive wrote {outside:?} outside its folder"
    );
    let _ = std::fs::remove_dir_all(&room);
}

/// Model manifests (`model.toml`, in a model folder or a signed pack): parsed and validated
/// as the inference stage loads one, then asked what the daemon asks of it (each label's
/// threshold, the input tensor's size, the files it names).
pub fn model_manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Manifest::parse(text, std::path::Path::new("/models/fuzz/model.toml")) else {
        return;
    };
    for i in 0..m.labels.len() + 1 {
        let _ = m.threshold(i);
    }
    let _ = m.input_len();
    let _ = (m.model_path(), m.weights_path());
}

/// Endorsement JSON: parsed, verified against the roots, and accepted into trust anchors.
pub fn endorsement(data: &[u8]) {
    if let Ok(e) = duli_firmware::endorsement::Endorsement::from_json(data) {
        let _ = e.verify(test_anchors().roots());
        let mut anchors = test_anchors().clone();
        let _ = anchors.accept_endorsement(&e);
        let _ = e.to_json();
    }
}

/// Configuration and provisioning TOML: loaded and validated as `duli run` and
/// `duli provision` load them.
pub fn config_toml(data: &[u8]) {
    let Some(path) = scratch_file("config.toml", data) else {
        return;
    };
    if let Ok(cfg) = Config::load(Some(&path), std::iter::empty()) {
        let _ = cfg.to_toml();
    }
    let _ = crate::provision::read_file(&path);
}
