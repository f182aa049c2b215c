//! The import directions of docs/architecture.md, checked on the source: the index database
//! is named only inside `store/`, and each layer uses only the modules it may.

use std::path::{Path, PathBuf};

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every `.rs` file under `dir`, with its path relative to `src/`.
fn sources(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path
                    .strip_prefix(src_dir())
                    .unwrap()
                    .to_string_lossy()
                    .replace('\\', "/");
                out.push((rel, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    out.sort();
    assert!(out.len() > 50, "the source tree was not found");
    out
}

/// The code of a file: without its unit tests (a test may use fixtures of any module) and
/// without comments (a doc link is not a use).
fn without_tests(text: &str) -> String {
    let code = match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => &text[..at],
        None => text,
    };
    code.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The modules a file names, as `crate::<module>` paths (first segment only).
fn crate_modules(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        let before = text[..at].chars().next_back();
        // `duli_firmware::...` and similar do not count; `crate::` must start a path.
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') && !name.is_empty() {
            out.push(name);
        }
    }
    out
}

fn in_module(rel: &str, module: &str) -> bool {
    rel == format!("{module}.rs") || rel.starts_with(&format!("{module}/"))
}

/// Files of `module` that use one of `forbidden`.
fn violations(module: &str, forbidden: &[&str]) -> Vec<String> {
    let mut bad = Vec::new();
    for (rel, text) in sources(&src_dir()) {
        if !in_module(&rel, module) {
            continue;
        }
        for used in crate_modules(&without_tests(&text)) {
            if forbidden.contains(&used.as_str()) {
                bad.push(format!("{rel} uses crate::{used}"));
            }
        }
    }
    bad.sort();
    bad.dedup();
    bad
}

/// sled is named only inside `store/`: every other module reaches persistence through the
/// store's typed handles.
#[test]
fn only_the_store_names_the_index_database() {
    let offenders: Vec<String> = sources(&src_dir())
        .into_iter()
        .filter(|(rel, _)| !rel.starts_with("store/"))
        .filter(|(_, text)| text.to_lowercase().contains("sled"))
        .map(|(rel, _)| rel)
        .collect();
    assert!(
        offenders.is_empty(),
        "files outside store/ that name sled: {offenders:?}"
    );
}

/// Nor does the store's public interface hand sled out: no public function of `store/`
/// takes or returns a sled type (only functions visible inside the store may).
#[test]
fn the_store_hands_out_no_sled_type() {
    let mut bad = Vec::new();
    for (rel, text) in sources(&src_dir()) {
        if !rel.starts_with("store/") {
            continue;
        }
        let code = without_tests(&text);
        let lines: Vec<&str> = code.lines().collect();
        for (n, line) in lines.iter().enumerate() {
            let t = line.trim_start();
            if !(t.starts_with("pub fn ") || t.starts_with("pub async fn ")) {
                continue;
            }
            // The signature, over as many lines as it takes, up to its body or `where`.
            let signature: String = lines[n..]
                .iter()
                .take_while(|l| !l.trim_start().starts_with("where"))
                .scan(false, |done, l| {
                    (!*done).then(|| {
                        *done = l.contains('{') || l.trim_end().ends_with(';');
                        *l
                    })
                })
                .collect();
            if signature.contains("sled::")
                || signature.contains("TransactionalTree")
                || signature.contains("UnabortableTransactionError")
            {
                bad.push(format!("{rel}:{}: {}", n + 1, t));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The names of the database's trees are the store's: a stage asks for its records by a
/// `RecordTree`, never by a name of its own, so no two stages can share a tree by
/// accident and the store knows every tree it holds.
#[test]
fn only_the_store_names_its_trees() {
    let mut bad = Vec::new();
    for (rel, text) in sources(&src_dir()) {
        if rel.starts_with("store/") {
            continue;
        }
        for (n, line) in without_tests(&text).lines().enumerate() {
            let t = line.trim_start();
            let declares = (t.starts_with("const ") || t.starts_with("pub const "))
                && t.contains("TREE")
                && t.contains("&str");
            if declares || t.contains(".records(\"") || t.contains("open_tree(") {
                bad.push(format!("{rel}:{}: {t}", n + 1));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The stages built on the store, in flow order, and the daemon that wires them.
const STAGES: [&str; 11] = [
    "receive",
    "qr",
    "assemble",
    "infer",
    "record",
    "results",
    "deliver",
    "console",
    "control",
    "daemon",
    "retention",
];

/// The store depends on the shared records, never on a stage that uses it.
#[test]
fn the_store_uses_no_later_stage() {
    let bad = violations("store", &[&STAGES[..], &["demo", "provision"]].concat());
    assert!(bad.is_empty(), "{bad:#?}");
}

/// The protocol layers know nothing of the services built on them.
#[test]
fn protocol_layers_use_no_service() {
    let services = [
        "store", "receive", "qr", "assemble", "infer", "record", "results", "deliver", "console",
        "control", "daemon",
    ];
    for layer in ["ul", "dimse", "dataset_guard"] {
        let bad = violations(layer, &services);
        assert!(bad.is_empty(), "{bad:#?}");
    }
}

/// The record stage owns "result → deliverables": inference hands it results and does
/// not build messages or objects itself; `results/` builds DICOM objects only; `deliver/`
/// only delivers; the domain records depend on no stage.
#[test]
fn the_record_stage_sits_between_inference_results_and_delivery() {
    let bad = violations("infer", &["deliver", "results", "console", "report"]);
    assert!(bad.is_empty(), "{bad:#?}");
    let bad = violations("results", &["deliver", "infer", "record", "console"]);
    assert!(bad.is_empty(), "{bad:#?}");
    let bad = violations("deliver", &["results", "infer", "record", "console"]);
    assert!(bad.is_empty(), "{bad:#?}");
    let bad = violations(
        "report",
        &["deliver", "infer", "record", "results", "console", "store"],
    );
    assert!(bad.is_empty(), "{bad:#?}");
    // Of inference, the record stage uses only the pixel decoding (for the SC).
    for (rel, text) in sources(&src_dir()) {
        if in_module(&rel, "record") {
            let code = without_tests(&text);
            for (at, _) in code.match_indices("crate::infer::") {
                assert!(
                    code[at..].starts_with("crate::infer::dicom_image"),
                    "{rel} uses more of inference than its pixel decoding"
                );
            }
        }
    }
}

/// The checker itself: a `crate::` path is found, a longer identifier ending in `crate`
/// is not, and unit tests are left out.
#[test]
fn the_checker_finds_crate_paths() {
    let text = "use crate::store::Store;\nlet x = my_crate::deliver::y;\n#[cfg(test)]\nmod tests {\n use crate::infer; }";
    assert_eq!(
        crate_modules(&without_tests(text)),
        vec!["store".to_string()]
    );
    assert!(in_module("store/mod.rs", "store"));
    assert!(in_module("dataset_guard.rs", "dataset_guard"));
    assert!(!in_module("storex.rs", "store"));
}

/// Supervision and the watchdog know no stage: the daemon hands the watchdog its liveness
/// probe (the store's) and each supervised stage its work.
#[test]
fn supervision_uses_no_stage() {
    let bad = violations("supervise", &[&["store"][..], &STAGES].concat());
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Accounts are shared by the console and the command line: they use neither, nor any
/// other stage.
#[test]
fn accounts_use_no_stage() {
    let bad = violations(
        "accounts",
        &[
            "console", "control", "daemon", "deliver", "record", "infer", "receive",
        ],
    );
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Query/Retrieve serves on a narrow context of its own (`qr::Context`): it knows nothing
/// of the storage SCP's internals, nor the SCP of it.
#[test]
fn query_retrieve_and_the_storage_scp_stay_apart() {
    let bad = violations("qr", &["receive", "console", "daemon"]);
    assert!(bad.is_empty(), "{bad:#?}");
}

/// Errors are typed: no function of the daemon returns a bare `String` as its error (a
/// caller can then tell the causes apart, and the context travels with the source).
#[test]
fn no_function_returns_a_string_error() {
    let mut bad = Vec::new();
    for (rel, text) in sources(&src_dir()) {
        let code = without_tests(&text);
        for (n, line) in code.lines().enumerate() {
            let compact: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            // `-> Result<T, String>` and `-> Option<Result<T, String>>`, on the signature's
            // line or on the last line of a signature written over several.
            let returns = compact.contains("->Result<") || compact.contains("->Option<Result<");
            let string_error = [",String>{", ",String>>{", ",String>where", ",String>>where"]
                .iter()
                .any(|end| {
                    compact.ends_with(end) || end.ends_with("where") && compact.contains(end)
                });
            if returns && string_error {
                bad.push(format!("{rel}:{}: {}", n + 1, line.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
}
