//! The native pixel decoders (CharLS for JPEG-LS, C++; OpenJPEG for JPEG 2000, machine
//! translated from C) run in a child process, so that a memory-safety bug reached by a
//! hostile codestream ends that child, not the daemon.
//!
//! The parent ([`decode_display`]) starts `duli decode-pixels -` (the running executable)
//! with no environment, the file it checked as stdin and stdout piped, reads at most the
//! image the header declared (already held to `inference.max_pixels`), and kills the child
//! when it runs past its deadline. The child ([`child_main`]) lowers its limits (address space, CPU seconds,
//! open descriptors, no core dump), opens and pre-scans the
//! file, then installs a seccomp filter that allows only memory management, reading and
//! writing already-open descriptors and exiting, decodes the first frame through the same
//! display pipeline as in-process decoding, and writes `DULIGRAY`, width and height (u32
//! little endian) and the 8-bit pixels to stdout.
//!
//! Retrieval by a peer that does not accept the stored transfer syntax needs the whole
//! instance re-encoded uncompressed: [`transcode`] runs `duli decode-pixels --transcode TS
//! -` (the checked file as stdin) under the same limits and filter, which writes the
//! re-encoded data set into a file the parent gave it as stdout (for every stored syntax, not only these codecs: the
//! decoded instance is held by the child, never by the daemon).
//!
//! Without a decoder executable these syntaxes are refused, never decoded in the daemon.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use super::dicom_image::{DicomImage, DicomImageError};
use super::display::GrayImage;

/// Transfer syntaxes the registry hands to CharLS (native code).
pub const CHARLS_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.80", // JPEG-LS lossless
    "1.2.840.10008.1.2.4.81", // JPEG-LS near-lossless
];

/// Transfer syntaxes the registry hands to OpenJPEG (machine-translated code): JPEG 2000
/// Parts 1 and 2 and High-Throughput JPEG 2000, whose frames are JPEG 2000 codestreams.
pub const OPENJPEG_SYNTAXES: &[&str] = &[
    "1.2.840.10008.1.2.4.90",  // JPEG 2000 lossless
    "1.2.840.10008.1.2.4.91",  // JPEG 2000
    "1.2.840.10008.1.2.4.92",  // JPEG 2000 Part 2 lossless
    "1.2.840.10008.1.2.4.93",  // JPEG 2000 Part 2
    "1.2.840.10008.1.2.4.201", // HTJ2K lossless
    "1.2.840.10008.1.2.4.202", // HTJ2K lossless RPCL
    "1.2.840.10008.1.2.4.203", // HTJ2K
];

/// Every transfer syntax whose decoder is native or machine-translated code: decoded in
/// the child. Every syntax the registry hands to CharLS or OpenJPEG is listed (a test
/// checks the registry against these lists).
pub fn sandboxed_syntaxes() -> impl Iterator<Item = &'static str> {
    CHARLS_SYNTAXES.iter().chain(OPENJPEG_SYNTAXES).copied()
}

/// Subcommand the child runs (hidden from `duli --help`).
pub const SUBCOMMAND: &str = "decode-pixels";
/// Option of [`SUBCOMMAND`] that re-encodes the instance instead of making its image.
pub const TRANSCODE: &str = "--transcode";
/// Longest a child may take (wall clock) before it is killed.
pub const DEADLINE: Duration = Duration::from_secs(60);
/// CPU seconds a child may use.
const CPU_SECONDS: u64 = 60;
/// Address space of a child: the largest image `inference.max_pixels` admits, decoded at
/// 16 bits, with the decoders' working memory, fits well inside.
const ADDRESS_SPACE: u64 = 4 << 30;
/// Output header.
const MAGIC: &[u8; 8] = b"DULIGRAY";

/// Whether pixel data in `transfer_syntax` is decoded in a child process.
pub fn is_sandboxed(transfer_syntax: &str) -> bool {
    let ts = transfer_syntax.trim_end_matches(['\0', ' ']);
    sandboxed_syntaxes().any(|s| s == ts)
}

/// The executable that runs the child: `DULI_DECODER` when set (tests), else this
/// executable when it is `duli` (as [`crate::locate::SELF_EXE`]), else a `duli` beside it
/// or one folder up (test binaries in `target/*/deps/`). `None`: no decoder executable;
/// callers then refuse the image (fail closed; only the crate's unit tests decode in
/// process).
pub fn decoder_exe() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("DULI_DECODER") {
        return Some(PathBuf::from(p));
    }
    if cfg!(test) {
        // Unit tests: a `duli` beside the test binary may be stale.
        return None;
    }
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "duli") {
        // By /proc/self/exe: a daemon started as root from a home folder and now running
        // as its service user may not search the folders above its own binary.
        return Some(PathBuf::from(crate::locate::SELF_EXE));
    }
    let dir = exe.parent()?;
    [dir.join("duli"), dir.parent()?.join("duli")]
        .into_iter()
        .find(|p| p.is_file())
}

/// Decodes the first frame of the open file `file` in a sandboxed child, which reads it as
/// its stdin (the very file the caller checked, not whatever its path names by then), and
/// returns its 8-bit display image. `max_pixels` bounds what is read back (the header's
/// declared size, already checked against `inference.max_pixels`); the child is killed at
/// `deadline` ([`DEADLINE`] in the daemon).
pub fn decode_display(
    exe: &Path,
    file: &std::fs::File,
    max_pixels: u64,
    deadline: Duration,
) -> Result<GrayImage, DicomImageError> {
    let out = run_child(
        exe,
        &[SUBCOMMAND.as_ref(), FROM_STDIN.as_ref()],
        Stdio::from(held_copy(file)?),
        Sink::Pipe,
        max_pixels.saturating_add(16),
        deadline,
    )?;
    parse_output(&out, max_pixels)
}

/// The file argument that makes the child read the file it was given as stdin.
const FROM_STDIN: &str = "-";

/// Another descriptor of the open file `file`, for a child's stdin.
fn held_copy(file: &std::fs::File) -> Result<std::fs::File, DicomImageError> {
    file.try_clone()
        .map_err(|e| DicomImageError::Decode(format!("pixel decoder input: {e}")))
}

/// The file the parent gave the child as its stdin.
fn stdin_file() -> Result<std::fs::File, DicomImageError> {
    use std::os::fd::AsFd;
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .map(std::fs::File::from)
        .map_err(|e| DicomImageError::Open(format!("stdin: {e}")))
}

/// Re-encodes the open file `input` in transfer syntax `ts` in a sandboxed child (which
/// reads it as its stdin), which writes the data set (no file meta) into `out` (an empty
/// file; the daemon then streams it from there, holding none of it); returns its length.
/// The child is killed once it wrote more than `max_bytes`.
pub fn transcode(
    exe: &Path,
    input: &std::fs::File,
    ts: &str,
    out: &std::fs::File,
    max_bytes: u64,
    deadline: Duration,
) -> Result<u64, DicomImageError> {
    run_child(
        exe,
        &[
            SUBCOMMAND.as_ref(),
            TRANSCODE.as_ref(),
            ts.as_ref(),
            FROM_STDIN.as_ref(),
        ],
        Stdio::from(held_copy(input)?),
        Sink::File(out),
        max_bytes,
        deadline,
    )?;
    let len = out
        .metadata()
        .map_err(|e| DicomImageError::Decode(format!("pixel decoder output: {e}")))?
        .len();
    if len > max_bytes {
        return Err(over_bound(max_bytes));
    }
    if len == 0 {
        return Err(DicomImageError::Decode(
            "the pixel decoder gave no data set".into(),
        ));
    }
    Ok(len)
}

/// Where a child's stdout goes.
enum Sink<'a> {
    /// A pipe the parent reads into memory (the display image).
    Pipe,
    /// A file the parent watches the size of (a re-encoded data set).
    File(&'a std::fs::File),
}

fn over_bound(cap: u64) -> DicomImageError {
    DicomImageError::Decode(format!(
        "the pixel decoder's output is over its bound of {cap} bytes"
    ))
}

/// Runs `exe args` with no environment, `stdin` (the file to decode) and its stdout into
/// `sink`, holds that output to `cap` bytes (a pipe is read to at most `cap` + 1, a
/// file's child killed once past it), kills it at `deadline`, and maps a failure to a
/// [`DicomImageError`] naming it. Returns what a pipe carried (nothing for a file).
fn run_child(
    exe: &Path,
    args: &[&std::ffi::OsStr],
    stdin: Stdio,
    sink: Sink<'_>,
    cap: u64,
    deadline: Duration,
) -> Result<Vec<u8>, DicomImageError> {
    let stdout = match sink {
        Sink::Pipe => Stdio::piped(),
        Sink::File(f) => Stdio::from(
            f.try_clone()
                .map_err(|e| DicomImageError::Decode(format!("pixel decoder output file: {e}")))?,
        ),
    };
    let mut child = Command::new(exe)
        .args(args)
        .env_clear()
        .stdin(stdin)
        .stdout(stdout)
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            DicomImageError::Decode(format!(
                "cannot start the pixel decoder {}: {e}",
                exe.display()
            ))
        })?;
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        if let Some(s) = stdout {
            s.take(cap.saturating_add(1)).read_to_end(&mut out)?;
        }
        Ok(out)
    });
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(s) = stderr {
            let _ = s.take(4096).read_to_string(&mut text);
        }
        text
    });
    let started = Instant::now();
    let written = |f: &std::fs::File| f.metadata().map(|m| m.len()).unwrap_or(0);
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if started.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(DicomImageError::Decode(format!(
                    "the pixel decoder did not finish in {:.1} s and was stopped",
                    deadline.as_secs_f64()
                )));
            }
            Ok(None) => {
                if let Sink::File(f) = sink {
                    if written(f) > cap {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(over_bound(cap));
                    }
                }
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(DicomImageError::Decode(format!("pixel decoder: {e}"))),
        }
    };
    let out = reader
        .join()
        .map_err(|_| DicomImageError::Decode("pixel decoder output reader failed".into()))?
        .map_err(|e| DicomImageError::Decode(format!("pixel decoder output: {e}")))?;
    let message = errors.join().unwrap_or_default();
    if out.len() as u64 > cap {
        return Err(over_bound(cap));
    }
    if !status.success() {
        let first = message.lines().next().unwrap_or("").trim();
        return Err(match status.code() {
            Some(2) if !first.is_empty() => DicomImageError::Decode(first.to_string()),
            Some(code) => DicomImageError::Decode(format!(
                "the pixel decoder failed (exit status {code}){}",
                if first.is_empty() {
                    String::new()
                } else {
                    format!(": {first}")
                }
            )),
            None => DicomImageError::Decode(format!(
                "the pixel decoder crashed ({}); the image is refused",
                signal_of(&status)
            )),
        });
    }
    Ok(out)
}

fn signal_of(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match status.signal() {
        Some(sig) => match nix::sys::signal::Signal::try_from(sig) {
            Ok(s) => format!("signal {}", s.as_str()),
            Err(_) => format!("signal {sig}"),
        },
        None => "no exit status".into(),
    }
}

/// Parses the child's output, refusing anything but exactly one declared image.
fn parse_output(out: &[u8], max_pixels: u64) -> Result<GrayImage, DicomImageError> {
    let bad = |why: &str| DicomImageError::Decode(format!("pixel decoder output {why}"));
    if out.len() < 16 || &out[..8] != MAGIC {
        return Err(bad("has no image header"));
    }
    let width = u32::from_le_bytes([out[8], out[9], out[10], out[11]]);
    let height = u32::from_le_bytes([out[12], out[13], out[14], out[15]]);
    let count = u64::from(width) * u64::from(height);
    if count == 0 || count > max_pixels || out.len() as u64 != 16 + count {
        return Err(bad("does not match its header"));
    }
    Ok(GrayImage {
        width,
        height,
        pixels: out[16..].to_vec(),
    })
}

/// `duli decode-pixels FILE|-` (the image of FILE, or of the file given as stdin) or
/// `duli decode-pixels --transcode TS FILE|-` (the re-encoded data set): the child. Exit
/// status 0 with the output on stdout, 2 with the reason on stderr.
pub fn child_main(args: &[std::ffi::OsString]) -> ExitCode {
    let result = match args {
        [file] if file == FROM_STDIN => child_of_stdin(),
        [file] => child(Path::new(file)),
        [flag, ts, file] if flag == TRANSCODE => match ts.to_str() {
            Some(ts) if file == FROM_STDIN => stdin_file()
                .map_err(ChildError::from)
                .and_then(|f| child_transcode(f, ts)),
            Some(ts) => std::fs::File::open(file)
                .map_err(|e| ChildError::from(DicomImageError::Open(e.to_string())))
                .and_then(|f| child_transcode(f, ts)),
            None => Err(ChildError::Usage),
        },
        _ => Err(ChildError::Usage),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "{e}");
            ExitCode::from(2)
        }
    }
}

/// Why the child did not write an image (its stderr line).
#[derive(Debug, thiserror::Error)]
enum ChildError {
    /// A resource limit could not be set.
    #[error("setrlimit {resource:?}: {source}")]
    Limit {
        /// The limit.
        resource: nix::sys::resource::Resource,
        /// The system's error.
        source: nix::Error,
    },
    /// The file cannot be opened or its pixels decoded.
    #[error(transparent)]
    Image(#[from] DicomImageError),
    /// No seccomp filter exists for this architecture.
    #[error("seccomp on {arch}: {0:?}", arch = std::env::consts::ARCH)]
    Arch(seccompiler::BackendError),
    /// The seccomp filter cannot be built.
    #[error("seccomp filter: {0}")]
    Filter(seccompiler::BackendError),
    /// The seccomp filter cannot be compiled.
    #[error("seccomp filter: {0:?}")]
    Compile(seccompiler::BackendError),
    /// The seccomp filter cannot be applied.
    #[error("seccomp: {0}")]
    Apply(seccompiler::Error),
    /// Debug builds only: what the confined child can still do (see [`probe`]).
    #[error("{0}")]
    Probe(String),
    /// The image cannot be written to stdout.
    #[error("writing the image: {0}")]
    Write(std::io::Error),
    /// Arguments other than `FILE` or `--transcode TS FILE` (`-` for FILE: the file given
    /// as stdin).
    #[error("usage: duli {SUBCOMMAND} [{TRANSCODE} TS] FILE|-")]
    Usage,
}

fn child(path: &Path) -> Result<(), ChildError> {
    let file = std::fs::File::open(path)
        .map_err(|e| DicomImageError::Open(format!("{}: {e}", path.display())))?;
    child_of(file)
}

/// The child decoding the file its parent gave it as stdin.
fn child_of_stdin() -> Result<(), ChildError> {
    child_of(stdin_file()?)
}

fn child_of(file: std::fs::File) -> Result<(), ChildError> {
    limit_resources()?;
    let image = DicomImage::open_held(file, None)?;
    confine()?;
    if cfg!(debug_assertions) && std::env::var_os("DULI_DEBUG_SANDBOX_PROBE").is_some() {
        return Err(ChildError::Probe(probe()));
    }
    let gray = image.decode_in_process()?;
    let mut out = Vec::with_capacity(16 + gray.pixels.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&gray.width.to_le_bytes());
    out.extend_from_slice(&gray.height.to_le_bytes());
    out.extend_from_slice(&gray.pixels);
    write_out(&out)
}

fn write_out(out: &[u8]) -> Result<(), ChildError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(out)
        .and_then(|()| stdout.flush())
        .map_err(ChildError::Write)
}

fn child_transcode(file: std::fs::File, ts: &str) -> Result<(), ChildError> {
    use dicom_encoding::TransferSyntaxIndex;
    use dicom_pixeldata::Transcode;
    limit_resources()?;
    let fail = |why: String| ChildError::Image(DicomImageError::Decode(why));
    let target = dicom_transfer_syntax_registry::TransferSyntaxRegistry
        .get(ts)
        .ok_or_else(|| fail(format!("unknown transfer syntax {ts}")))?;
    // From the file's start: the descriptor shares its offset with the parent's.
    crate::dataset_guard::check_open_file(&file).map_err(|e| fail(e.to_string()))?;
    std::io::Seek::rewind(&mut &file).map_err(|e| fail(e.to_string()))?;
    let mut obj = dicom_object::OpenFileOptions::new()
        .from_reader(&file)
        .map_err(|e| fail(e.to_string()))?;
    let stored = obj.meta().transfer_syntax().to_string();
    super::stream_check::check_stream(&obj, &stored).map_err(ChildError::Image)?;
    confine()?;
    obj.transcode(target).map_err(|e| fail(e.to_string()))?;
    // Written as it is encoded: the parent gave a file, not a pipe it must drain.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    obj.write_dataset_with_ts(&mut out, target)
        .map_err(|e| fail(e.to_string()))?;
    out.flush().map_err(ChildError::Write)
}

/// Debug builds only: what the confined child can still do, for the sandbox test.
fn probe() -> String {
    let open = std::fs::File::open("/etc/hostname")
        .map(|_| ())
        .map_err(|e| e.kind());
    let create = std::fs::File::create("/tmp/duli-sandbox-probe")
        .map(|_| ())
        .map_err(|e| e.kind());
    let thread = std::thread::Builder::new()
        .spawn(|| ())
        .map(|_| ())
        .map_err(|e| e.kind());
    let socket = std::net::TcpStream::connect("127.0.0.1:9")
        .map(|_| ())
        .map_err(|e| e.kind());
    let exec = std::process::Command::new("/bin/true")
        .status()
        .map(|_| ())
        .map_err(|e| e.kind());
    format!(
        "probe open={open:?} create={create:?} thread={thread:?} socket={socket:?} exec={exec:?}"
    )
}

fn limit_resources() -> Result<(), ChildError> {
    use nix::sys::resource::{setrlimit, Resource};
    let set = |resource: Resource, v: u64| {
        setrlimit(resource, v, v).map_err(|source| ChildError::Limit { resource, source })
    };
    set(Resource::RLIMIT_AS, ADDRESS_SPACE)?;
    set(Resource::RLIMIT_CPU, CPU_SECONDS)?;
    set(Resource::RLIMIT_CORE, 0)?;
    set(Resource::RLIMIT_NOFILE, 16)?;
    Ok(())
}

/// No new privileges, then a seccomp filter: memory management, I/O on descriptors already
/// open, time, futexes, signals' return and exit. Anything else fails with EPERM; the
/// process may not create threads or processes, open files or use the network.
fn confine() -> Result<(), ChildError> {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};
    let allowed = [
        nix::libc::SYS_read,
        nix::libc::SYS_write,
        nix::libc::SYS_writev,
        nix::libc::SYS_close,
        nix::libc::SYS_lseek,
        nix::libc::SYS_fstat,
        nix::libc::SYS_newfstatat,
        nix::libc::SYS_statx,
        nix::libc::SYS_brk,
        nix::libc::SYS_mmap,
        nix::libc::SYS_munmap,
        nix::libc::SYS_mremap,
        nix::libc::SYS_madvise,
        nix::libc::SYS_mprotect,
        nix::libc::SYS_futex,
        nix::libc::SYS_clock_gettime,
        nix::libc::SYS_getrandom,
        nix::libc::SYS_sigaltstack,
        nix::libc::SYS_rt_sigaction,
        nix::libc::SYS_rt_sigprocmask,
        nix::libc::SYS_rt_sigreturn,
        nix::libc::SYS_sched_yield,
        nix::libc::SYS_sched_getaffinity,
        nix::libc::SYS_exit,
        nix::libc::SYS_exit_group,
    ];
    let rules = allowed.iter().map(|&nr| (nr, Vec::new())).collect();
    let arch = std::env::consts::ARCH
        .try_into()
        .map_err(ChildError::Arch)?;
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(nix::libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(ChildError::Filter)?;
    let program: BpfProgram = filter.try_into().map_err(ChildError::Compile)?;
    seccompiler::apply_filter(&program).map_err(ChildError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_must_match_its_header() {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&2u32.to_le_bytes());
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&[1, 2, 3, 4, 5, 6]);
        let img = parse_output(&out, 6).expect("exact image");
        assert_eq!((img.width, img.height, img.pixels.len()), (2, 3, 6));
        assert!(parse_output(&out, 5).is_err(), "over the declared budget");
        assert!(parse_output(&out[..20], 6).is_err(), "truncated");
        let mut long = out.clone();
        long.push(0);
        assert!(parse_output(&long, 100).is_err(), "trailing bytes");
        assert!(parse_output(b"GRAYDULI", 6).is_err());
    }

    #[test]
    fn every_pixel_codec_of_the_registry_is_rust_or_sandboxed() {
        // Codecs written in Rust, decoded in the daemon behind `stream_check`, and those
        // `stream_check` refuses before their decoder runs (no check holds them to the
        // header: a deflated frame would inflate to whatever it holds).
        let in_process = [
            "1.2.840.10008.1.2.5",    // RLE Lossless
            "1.2.840.10008.1.2.4.50", // JPEG (jpeg-decoder, vendored)
            "1.2.840.10008.1.2.4.51",
            "1.2.840.10008.1.2.4.57",
            "1.2.840.10008.1.2.4.70",
            "1.2.840.10008.1.2.1.98", // Encapsulated Uncompressed (a copy)
        ];
        let refused = ["1.2.840.10008.1.2.8.1"]; // Deflated Image Frame Compression
        let mut seen = Vec::new();
        for ts in dicom_transfer_syntax_registry::TransferSyntaxRegistry.iter() {
            let decodes_pixels = matches!(
                ts.codec(),
                dicom_encoding::transfer_syntax::Codec::EncapsulatedPixelData(Some(_), _)
            );
            if !decodes_pixels {
                continue;
            }
            let uid = ts.uid();
            seen.push(uid.to_string());
            assert!(
                in_process.contains(&uid) || is_sandboxed(uid) || refused.contains(&uid),
                "{uid} ({}) has a pixel decoder that is neither Rust nor sandboxed",
                ts.name()
            );
        }
        for uid in sandboxed_syntaxes() {
            assert!(
                seen.iter().any(|s| s == uid),
                "{uid} is listed but not decodable"
            );
        }
    }

    #[test]
    fn only_native_codecs_are_sandboxed() {
        assert!(is_sandboxed("1.2.840.10008.1.2.4.80\0"));
        assert!(is_sandboxed("1.2.840.10008.1.2.4.90"));
        assert!(is_sandboxed("1.2.840.10008.1.2.4.201"));
        assert!(!is_sandboxed("1.2.840.10008.1.2.1"));
        assert!(!is_sandboxed("1.2.840.10008.1.2.5"));
    }
}
