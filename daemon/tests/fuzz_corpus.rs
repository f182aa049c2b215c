//! Replays every fuzzing corpus file and every crash found by the fuzzers through the same
//! entry points the fuzz targets call (`duli::fuzz_targets`), on the stable toolchain: a
//! parser change that brings back a crash, a hang or a panic fails the ordinary suite. A
//! panic counts even when the code under test catches it (as the daemon does around
//! third-party decoders): libFuzzer stops on every panic, and so does the replay. So does
//! a single allocation over libFuzzer's malloc limit (`-rss_limit_mb=2048` in `make
//! fuzz`), which it reports as out-of-memory: the replay watches every allocation of the
//! thread an input runs on.
//!
//! Corpora: `fuzz/corpus/<target>/` (the seeds of `fuzz/make_seeds.py`, one or more per
//! encoding and message kind) and `fuzz/minimized/<target>/` (what the fuzzers grew during
//! `make fuzz`, reduced by `make fuzz-minimize` to the smallest set that keeps its
//! coverage); crashes: `fuzz/regressions/<target>/` (each one a fixed bug). The grown
//! inputs themselves stay in `fuzz/grown/`, outside the repository (tens of thousands of
//! files).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Once};
use std::time::Duration;

use duli::fuzz_targets::{run, TARGETS};

/// Longest one input may take in this (unoptimised) build before it counts as a hang.
const PER_INPUT: Duration = Duration::from_secs(20);

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    out.sort();
    out
}

thread_local! {
    /// Whether a panic began on this thread, caught or not.
    static PANICKED: Cell<bool> = const { Cell::new(false) };
    /// The largest allocation (or reallocation) made on this thread, in bytes.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// Largest single allocation one input may make: libFuzzer's malloc limit in `make fuzz`.
const MALLOC_LIMIT: usize = 2048 << 20;

/// The system allocator, noting the largest size asked for on each thread.
struct Watching;

fn note_size(size: usize) {
    // `try_with`: nothing is noted while a thread's locals are being torn down.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every call is passed on unchanged to the system allocator; noting the size
// neither allocates nor unwinds.
unsafe impl GlobalAlloc for Watching {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_size(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_size(layout.size());
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_size(new_size);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Watching = Watching;

/// Marks every panic on the thread it happens on, then reports it as before.
fn note_panics() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let report = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.with(|p| p.set(true));
            report(info);
        }));
    });
}

/// Runs one input in its own thread so that a hang is reported with its file name; a
/// panic on that thread fails it even when something caught it.
fn replay(target: &'static str, path: &Path) {
    note_panics();
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::Builder::new()
        .stack_size(8 << 20)
        .spawn(move || {
            assert!(run(target, &data), "no target named {target}");
            let _ = tx.send((PANICKED.with(Cell::get), LARGEST.with(Cell::get)));
        })
        .expect("spawn replay thread");
    match rx.recv_timeout(PER_INPUT) {
        Ok((false, largest)) if largest <= MALLOC_LIMIT => {
            let _ = handle.join();
        }
        Ok((false, largest)) => {
            let _ = handle.join();
            panic!(
                "{target}: {} made an allocation of {largest} bytes, over the {MALLOC_LIMIT}-byte limit",
                path.display()
            );
        }
        Ok((true, _)) => {
            let _ = handle.join();
            panic!(
                "{target}: {} panicked inside (the panic was caught)",
                path.display()
            );
        }
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            let _ = handle.join();
            panic!("{target}: {} panicked", path.display());
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            panic!(
                "{target}: {} did not finish in {PER_INPUT:?}",
                path.display()
            )
        }
    }
}

#[test]
fn every_target_has_seeds_and_every_corpus_and_crash_file_replays_cleanly() {
    let root = fuzz_dir();
    let mut replayed = 0;
    for (name, _) in TARGETS {
        let corpus = files(&root.join("corpus").join(name));
        assert!(
            !corpus.is_empty(),
            "fuzz/corpus/{name} has no seeds (run .venv/bin/python fuzz/make_seeds.py)"
        );
        let minimized = files(&root.join("minimized").join(name));
        assert!(
            !minimized.is_empty(),
            "fuzz/minimized/{name} is empty (make fuzz, then make fuzz-minimize)"
        );
        let crashes = files(&root.join("regressions").join(name));
        for path in corpus.iter().chain(&minimized).chain(&crashes) {
            replay(name, path);
            replayed += 1;
        }
    }
    assert!(replayed >= TARGETS.len());
    eprintln!(
        "replayed {replayed} fuzz inputs through {} targets",
        TARGETS.len()
    );
}

#[test]
fn every_fuzz_crate_target_is_an_entry_point() {
    // The fuzz crate declares one binary per entry point: a target added to one side
    // only would go unfuzzed or unreplayed.
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for (name, _) in TARGETS {
        assert!(
            manifest.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml has no [[bin]] for {name}"
        );
        let src = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        assert!(src.is_file(), "{} is missing", src.display());
    }
    // And the other way: every fuzz target source is an entry point replayed here.
    for entry in std::fs::read_dir(fuzz_dir().join("fuzz_targets")).expect("fuzz_targets") {
        let path = entry.unwrap().path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else {
            continue;
        };
        assert!(
            TARGETS.iter().any(|(name, _)| *name == stem),
            "{} is fuzzed but not replayed: add it to fuzz_targets::TARGETS",
            path.display()
        );
    }
    assert!(!run("no-such-target", b""));
}

#[test]
fn the_pixel_seeds_cover_every_transfer_syntax_and_reach_the_tensor() {
    // Seeds that stop at the first error would leave the decoders unfuzzed: each DICOM
    // seed must decode to a display image, and together they cover every transfer syntax
    // the SCP accepts for storage.
    let dir = fuzz_dir().join("corpus/pixels");
    let mut syntaxes = std::collections::BTreeSet::new();
    for path in files(&dir) {
        if path.extension().and_then(|e| e.to_str()) != Some("dcm") {
            continue;
        }
        let image = duli::infer::dicom_image::DicomImage::open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if path.ends_with("jpeg-extended-12bit.dcm") {
            // 12-bit lossy JPEG is not decoded (the conformance statement says so): a clear
            // error, never a crash.
            assert!(image.display_image().is_err());
            continue;
        }
        let gray = image
            .display_image()
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert!(gray.width > 0 && gray.height > 0);
        let bytes = std::fs::read(&path).expect("read seed");
        let obj =
            dicom_object::from_reader(std::io::Cursor::new(&bytes[128..])).expect("parse seed");
        syntaxes.insert(
            obj.meta()
                .transfer_syntax()
                .trim_end_matches('\0')
                .to_string(),
        );
    }
    for ts in duli::dimse::uids::TRANSFER_SYNTAXES {
        assert!(
            syntaxes.contains(*ts),
            "no pixel seed in transfer syntax {ts}: {syntaxes:?}"
        );
    }
}
