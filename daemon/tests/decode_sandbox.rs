//! The native pixel decoders (JPEG-LS, JPEG 2000) run in a confined child process: the
//! images decode exactly as in-process, a crashing or hanging decoder costs only the child,
//! and the confined child can neither open files, start threads or processes, nor use the
//! network.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use duli::infer::decode_sandbox::{decode_display, is_sandboxed};
use duli::infer::dicom_image::DicomImage;

fn duli() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_duli"))
}

fn seed(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus/pixels")
        .join(name)
}

fn script(dir: &Path, name: &str, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The file at `path`, opened for a decoder to read.
fn open(path: &Path) -> std::fs::File {
    std::fs::File::open(path).unwrap()
}

/// [`decode_display`] of a script just written: another test's thread may fork while the
/// script is still open for writing, and until that child execs, the script is "busy"
/// (ETXTBSY); that race belongs to the test, so it is retried.
fn decode_script(
    exe: &Path,
    path: &Path,
    max_pixels: u64,
    deadline: Duration,
) -> Result<duli::infer::display::GrayImage, duli::infer::dicom_image::DicomImageError> {
    let mut tries = 0;
    loop {
        let result = decode_display(exe, &open(path), max_pixels, deadline);
        match &result {
            Err(e) if e.to_string().contains("Text file busy") && tries < 50 => {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return result,
        }
    }
}

#[test]
fn jpeg_ls_and_jpeg_2000_decode_in_the_child_exactly_as_in_process() {
    for name in [
        "jpeg-ls-lossless.dcm",
        "jpeg-ls-near-lossless.dcm",
        "j2k-lossless.dcm",
        "j2k-lossy.dcm",
    ] {
        let path = seed(name);
        let image = DicomImage::open(&path).unwrap();
        let here = image.decode_in_process().unwrap();
        let child =
            decode_display(&duli(), &open(&path), u64::MAX, Duration::from_secs(30)).unwrap();
        assert_eq!(child, here, "{name}");
        // And the ordinary entry point takes the sandboxed route for these syntaxes.
        assert_eq!(image.display_image().unwrap(), here, "{name}");
    }
    let ts = |name: &str| {
        let bytes = std::fs::read(seed(name)).unwrap();
        dicom_object::from_reader(std::io::Cursor::new(&bytes[128..]))
            .unwrap()
            .meta()
            .transfer_syntax()
            .to_string()
    };
    assert!(is_sandboxed(&ts("j2k-lossless.dcm")));
    assert!(is_sandboxed(&ts("jpeg-ls-lossless.dcm")));
    assert!(!is_sandboxed(&ts("rle.dcm")));
}

#[test]
fn a_crashing_decoder_is_an_error_for_that_image_only() {
    let dir = tempfile::tempdir().unwrap();
    let segv = script(dir.path(), "segv", "kill -SEGV $$");
    let err = decode_script(
        &segv,
        &seed("j2k-lossless.dcm"),
        1 << 20,
        Duration::from_secs(10),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("crashed") && err.contains("SIGSEGV"), "{err}");

    let liar = script(
        dir.path(),
        "liar",
        "printf 'DULIGRAY\\377\\377\\0\\0\\377\\377\\0\\0'; head -c 100 /dev/zero",
    );
    let err = decode_script(
        &liar,
        &seed("j2k-lossless.dcm"),
        1 << 20,
        Duration::from_secs(10),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("does not match its header"), "{err}");
}

#[test]
fn a_hanging_decoder_is_killed_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let hang = script(dir.path(), "hang", "exec sleep 600");
    let started = Instant::now();
    let err = decode_script(
        &hang,
        &seed("j2k-lossless.dcm"),
        1 << 20,
        Duration::from_millis(500),
    )
    .unwrap_err()
    .to_string();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(err.contains("did not finish"), "{err}");
}

#[test]
fn the_confined_child_cannot_open_files_spawn_threads_or_processes_or_connect() {
    let out = Command::new(duli())
        .arg("decode-pixels")
        .arg(seed("j2k-lossless.dcm"))
        .env_clear()
        .env("DULI_DEBUG_SANDBOX_PROBE", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.starts_with("probe "), "{text}");
    for what in ["open", "create", "thread", "socket", "exec"] {
        assert!(
            text.contains(&format!("{what}=Err(")),
            "{what} was allowed inside the sandbox: {text}"
        );
    }
    assert!(!Path::new("/tmp/duli-sandbox-probe").exists());

    // Without the probe the same child writes exactly one image and nothing else.
    let out = Command::new(duli())
        .arg("decode-pixels")
        .arg(seed("jpeg-ls-lossless.dcm"))
        .env_clear()
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(&out.stdout[..8], b"DULIGRAY");
}

#[test]
fn a_file_that_is_not_dicom_is_refused_by_the_child_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.dcm");
    std::fs::write(&junk, b"not a dicom file at all").unwrap();
    let err = decode_display(&duli(), &open(&junk), 1 << 20, Duration::from_secs(10))
        .unwrap_err()
        .to_string();
    assert!(err.contains("DICOM"), "{err}");
}

#[test]
fn retrieval_re_encodes_these_syntaxes_in_the_child_exactly_as_in_process() {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_pixeldata::Transcode;
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    let target = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(EXPLICIT_LE)
        .unwrap();
    for name in ["jpeg-ls-lossless.dcm", "j2k-lossless.dcm"] {
        let path = seed(name);
        let dir = tempfile::tempdir().unwrap();
        let out = std::fs::File::create(dir.path().join("out")).unwrap();
        let len = duli::infer::decode_sandbox::transcode(
            &duli(),
            &open(&path),
            EXPLICIT_LE,
            &out,
            64 << 20,
            Duration::from_secs(30),
        )
        .unwrap();
        let child = std::fs::read(dir.path().join("out")).unwrap();
        assert_eq!(child.len() as u64, len);
        let mut obj = dicom_object::open_file(&path).unwrap();
        obj.transcode(target).unwrap();
        let mut here = Vec::new();
        obj.write_dataset_with_ts(&mut here, target).unwrap();
        assert_eq!(child, here, "{name}");
        // Held to the bound it is given.
        let out = std::fs::File::create(dir.path().join("small")).unwrap();
        let err = duli::infer::decode_sandbox::transcode(
            &duli(),
            &open(&path),
            EXPLICIT_LE,
            &out,
            1024,
            Duration::from_secs(30),
        )
        .unwrap_err();
        assert!(err.to_string().contains("over its bound"), "{err}");
    }
}

#[test]
fn jpeg_2000_part_2_is_sandboxed_too_and_previews_take_the_same_route() {
    // The registry hands JPEG 2000 Part 2 (and HTJ2K) to the same OpenJPEG decoder: a
    // lossless JPEG 2000 file relabelled Part 2 decodes, in the child, to the same image.
    let dir = tempfile::tempdir().unwrap();
    let original = seed("j2k-lossless.dcm");
    let mut bytes = std::fs::read(&original).unwrap();
    let at = bytes
        .windows(22)
        .position(|w| w == b"1.2.840.10008.1.2.4.90")
        .unwrap();
    bytes[at + 21] = b'2';
    let part2 = dir.path().join("part2.dcm");
    std::fs::write(&part2, &bytes).unwrap();
    let image = DicomImage::open(&part2).unwrap();
    assert_eq!(image.transfer_syntax(), "1.2.840.10008.1.2.4.92");
    assert!(is_sandboxed(image.transfer_syntax()));
    let expected = DicomImage::open(&original)
        .unwrap()
        .decode_in_process()
        .unwrap();
    assert_eq!(image.display_image().unwrap(), expected);
    // The console preview of a sandboxed syntax is made from the child's display image.
    let (preview, info) = duli::console::preview::render(&part2, 1 << 30).unwrap();
    assert_eq!((info.min, info.max), (0.0, 255.0));
    assert_eq!(preview.width(), info.width);
    // And the pixel budget comes first.
    let err = duli::console::preview::render(&part2, 16).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
}

/// A JPEG-LS frame header that lies about the image's size (CharLS would allocate 8 GB
/// from it) is refused before decoding, with its reason, in the confined child that
/// analysis and previews use, and in process.
#[test]
fn a_jpeg_ls_header_that_lies_about_the_size_is_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(seed("jpeg-ls-lossless.dcm")).unwrap();
    let sof55 = bytes.windows(2).position(|w| w == [0xFF, 0xF7]).unwrap();
    bytes[sof55 + 5..sof55 + 9].copy_from_slice(&[0xFF; 4]);
    let path = dir.path().join("lying.dcm");
    std::fs::write(&path, &bytes).unwrap();
    let want = "JPEG-LS stream frame is 65535 x 65535";
    let err = decode_display(&duli(), &open(&path), 1 << 30, Duration::from_secs(30))
        .unwrap_err()
        .to_string();
    assert!(err.contains(want), "{err}");
    let err = DicomImage::open(&path)
        .unwrap()
        .decode_in_process()
        .unwrap_err()
        .to_string();
    assert!(err.contains(want), "{err}");
}

/// Hostile stored instances retrieved by a peer that wants them uncompressed: a corrupted
/// JPEG 2000 codestream (decoded in the child), a JPEG-LS frame header that lies about the
/// image's size (refused by the child's stream check), a truncated RLE one (decoded here,
/// behind the stream checks) and an image over the pixel budget are each a clear error for
/// that sub-operation, never a crash; a good one is re-encoded.
#[test]
fn retrieval_of_hostile_stored_instances_fails_cleanly() {
    use duli::qr::payload::{load, Limits, Payload, PayloadError};
    const EXPLICIT_LE: &str = "1.2.840.10008.1.2.1";
    let dir = tempfile::tempdir().unwrap();
    let limits = |max_pixels| Limits {
        max_pixels,
        disk_reserve: 0,
    };
    let record = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.path().join(name), bytes).unwrap();
        let obj = dicom_object::open_file(seed(name)).unwrap();
        duli::model::InstanceRecord {
            sop_instance_uid: obj
                .meta()
                .media_storage_sop_instance_uid
                .trim_end_matches('\0')
                .to_string(),
            transfer_syntax: obj
                .meta()
                .transfer_syntax()
                .trim_end_matches('\0')
                .to_string(),
            path: name.into(),
            ..Default::default()
        }
    };
    // Good: re-encoded.
    let good = record(
        "j2k-lossless.dcm",
        &std::fs::read(seed("j2k-lossless.dcm")).unwrap(),
    );
    let got = load(dir.path(), &good, EXPLICIT_LE, limits(1 << 30));
    assert!(matches!(got, Ok(Payload::Transcoded(_))), "{got:?}");
    drop(got); // its scratch file goes with it
               // Another instance at the record's path (sent again since the index was read): not
               // re-encoded for it.
    let other = duli::model::InstanceRecord {
        sop_instance_uid: "1.2.3.4.5".into(),
        ..good.clone()
    };
    let err = load(dir.path(), &other, EXPLICIT_LE, limits(1 << 30)).unwrap_err();
    assert!(
        err.to_string().contains("changed since the retrieve began"),
        "{err}"
    );
    // A copy that would take the data disk below its reserve: refused, nothing written.
    let err = load(
        dir.path(),
        &good,
        EXPLICIT_LE,
        Limits {
            max_pixels: 1 << 30,
            disk_reserve: u64::MAX,
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("below its reserve"), "{err}");
    let scratch: Vec<_> = std::fs::read_dir(dir.path().join("tmp"))
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(scratch.is_empty(), "{scratch:?}");
    // Over the pixel budget: refused before anything is decoded.
    let err = load(dir.path(), &good, EXPLICIT_LE, limits(16)).unwrap_err();
    assert!(err.to_string().contains("too large"), "{err}");
    // Corrupted codestreams, the lengths left intact.
    for name in ["j2k-lossy.dcm", "rle.dcm"] {
        let mut bytes = std::fs::read(seed(name)).unwrap();
        let n = bytes.len();
        for b in &mut bytes[n - n / 3..n - 16] {
            *b = 0xA5;
        }
        let rec = record(name, &bytes);
        match load(dir.path(), &rec, EXPLICIT_LE, limits(1 << 30)) {
            Err(PayloadError::Transcode { .. }) | Ok(_) => {}
            Err(other) => panic!("{name}: {other}"),
        }
    }
    // A JPEG-LS frame header claiming 65535 x 65535: CharLS would allocate 8 GB from it;
    // the child refuses the stream before decoding, naming why.
    let mut bytes = std::fs::read(seed("jpeg-ls-lossless.dcm")).unwrap();
    let sof55 = bytes.windows(2).position(|w| w == [0xFF, 0xF7]).unwrap();
    bytes[sof55 + 5..sof55 + 9].copy_from_slice(&[0xFF; 4]);
    let rec = record("jpeg-ls-lossless.dcm", &bytes);
    let err = load(dir.path(), &rec, EXPLICIT_LE, limits(1 << 30)).unwrap_err();
    assert!(
        matches!(err, PayloadError::Transcode { .. })
            && err
                .to_string()
                .contains("JPEG-LS stream frame is 65535 x 65535"),
        "{err}"
    );
    // Truncated: the pre-scan refuses it.
    let bytes = std::fs::read(seed("rle.dcm")).unwrap();
    let rec = record("rle.dcm", &bytes[..bytes.len() / 2]);
    assert!(load(dir.path(), &rec, EXPLICIT_LE, limits(1 << 30)).is_err());
}

/// An image is decoded from the file that was pre-scanned and opened, in the confined child
/// (JPEG-LS, JPEG 2000) and in place (native pixel data read from the file a row at a time)
/// alike: another file renamed over its path meanwhile is not what is decoded.
#[test]
fn the_file_opened_is_the_file_decoded_though_its_path_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    for (first, second, in_file) in [
        ("jpeg-ls-lossless.dcm", "j2k-lossy.dcm", false),
        ("explicit-le.dcm", "monochrome1.dcm", true),
    ] {
        let path = dir.path().join("image.dcm");
        std::fs::copy(seed(first), &path).unwrap();
        let image = DicomImage::open(&path).unwrap();
        assert_eq!(image.pixels_in_file(), in_file, "{first}");
        assert_eq!(is_sandboxed(image.transfer_syntax()), !in_file, "{first}");
        let expected = DicomImage::open(&seed(first))
            .unwrap()
            .decode_in_process()
            .unwrap();
        let other = dir.path().join("other.dcm");
        std::fs::copy(seed(second), &other).unwrap();
        std::fs::rename(&other, &path).unwrap();
        let replaced = DicomImage::open(&path)
            .unwrap()
            .decode_in_process()
            .unwrap();
        assert_ne!(replaced, expected, "{second} differs from {first}");
        assert_eq!(image.display_image().unwrap(), expected, "{first}");
    }
}
