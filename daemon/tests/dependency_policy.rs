//! The dependency policy of `deny.toml`, checked on every `make test` without cargo-deny
//! (which `make lint` runs too): every crate the shipped binary, the firmware crate and
//! their tests are built from, for each target `deny.toml` names, comes from crates.io or
//! the workspace, carries a licence expression the allow list satisfies, and no
//! workspace manifest asks for a wildcard version.

mod common;

use common::{repo_root, run};
use serde_json::Value;
use std::collections::{BTreeSet, HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

fn deny() -> toml::Value {
    let text = std::fs::read_to_string(repo_root().join("deny.toml")).unwrap();
    toml::from_str(&text).unwrap()
}

/// `cargo metadata` of the workspace for `target`, from the lock file (crates.io may be
/// asked for the manifests of crates only the other target builds).
fn metadata(target: &str) -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).args([
        "metadata",
        "--format-version",
        "1",
        "--locked",
        "--filter-platform",
        target,
    ]);
    let out = run(&mut cmd, Duration::from_secs(600));
    out.assert_success("cargo metadata");
    serde_json::from_str(&out.stdout).unwrap()
}

/// The strings of the TOML array `v`.
fn strings(v: &toml::Value) -> impl Iterator<Item = String> + '_ {
    v.as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
}

/// Whether the SPDX expression `expr` is satisfied by `allowed` (AND, OR, WITH and
/// parentheses; the old `A/B` form is read as `A OR B`, as cargo-deny reads it).
fn satisfied(expr: &str, allowed: &HashSet<String>) -> bool {
    let spaced = expr
        .replace('/', " OR ")
        .replace('(', " ( ")
        .replace(')', " ) ");
    let tokens: Vec<&str> = spaced.split_whitespace().collect();
    let mut pos = 0;
    let ok = or_expr(&tokens, &mut pos, allowed);
    ok && pos == tokens.len()
}

fn or_expr(t: &[&str], pos: &mut usize, allowed: &HashSet<String>) -> bool {
    let mut any = and_expr(t, pos, allowed);
    while t.get(*pos) == Some(&"OR") {
        *pos += 1;
        any |= and_expr(t, pos, allowed);
    }
    any
}

fn and_expr(t: &[&str], pos: &mut usize, allowed: &HashSet<String>) -> bool {
    let mut all = term(t, pos, allowed);
    while t.get(*pos) == Some(&"AND") {
        *pos += 1;
        all &= term(t, pos, allowed);
    }
    all
}

fn term(t: &[&str], pos: &mut usize, allowed: &HashSet<String>) -> bool {
    match t.get(*pos) {
        Some(&"(") => {
            *pos += 1;
            let v = or_expr(t, pos, allowed);
            if t.get(*pos) == Some(&")") {
                *pos += 1;
                v
            } else {
                false
            }
        }
        Some(id) => {
            *pos += 1;
            let mut license = id.to_string();
            if t.get(*pos) == Some(&"WITH") {
                license = format!("{license} WITH {}", t.get(*pos + 1).unwrap_or(&""));
                *pos += 2;
            }
            allowed.contains(&license)
        }
        None => false,
    }
}

#[test]
fn the_licence_expression_reader_follows_spdx() {
    let allowed: HashSet<String> = [
        "MIT",
        "Apache-2.0",
        "Unicode-3.0",
        "Apache-2.0 WITH LLVM-exception",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert!(satisfied("MIT OR Apache-2.0", &allowed));
    assert!(satisfied("MIT/Apache-2.0", &allowed));
    assert!(satisfied("(MIT OR Apache-2.0) AND Unicode-3.0", &allowed));
    assert!(satisfied(
        "Apache-2.0 WITH LLVM-exception OR GPL-2.0",
        &allowed
    ));
    assert!(!satisfied("(MIT OR Apache-2.0) AND NCSA", &allowed));
    assert!(!satisfied("GPL-3.0-only", &allowed));
    assert!(!satisfied("LGPL-2.1 WITH LLVM-exception", &allowed));
    assert!(!satisfied("(MIT", &allowed));
    assert!(!satisfied("", &allowed));
}

#[test]
fn every_dependency_is_from_crates_io_under_an_allowed_licence() {
    let policy = deny();
    let allowed: HashSet<String> = strings(&policy["licenses"]["allow"]).collect();
    let registries: Vec<String> = strings(&policy["sources"]["allow-registry"]).collect();
    let targets = policy["graph"]["targets"].as_array().unwrap();
    let mut checked = BTreeSet::new();
    for target in targets {
        let m = metadata(target.as_str().unwrap());
        let packages: HashMap<&str, &Value> = m["packages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p["id"].as_str().unwrap(), p))
            .collect();
        let nodes: HashMap<&str, &Value> = m["resolve"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| (n["id"].as_str().unwrap(), n))
            .collect();
        let members: Vec<&str> = m["workspace_members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        // Walk from the members: every kind of their dependencies (their tests included),
        // normal and build dependencies below them.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut todo: Vec<(&str, bool)> = members.iter().map(|id| (*id, true)).collect();
        while let Some((id, member)) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            for dep in nodes[id]["deps"].as_array().unwrap() {
                let dev_only = dep["dep_kinds"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|k| k["kind"].as_str() == Some("dev"));
                if member || !dev_only {
                    todo.push((dep["pkg"].as_str().unwrap(), false));
                }
            }
        }
        for id in seen {
            let p = packages[id];
            let name = format!(
                "{} {}",
                p["name"].as_str().unwrap_or("?"),
                p["version"].as_str().unwrap_or("?")
            );
            match p["source"].as_str() {
                None => continue, // the workspace's own crates
                Some(source) => assert!(
                    registries.iter().any(|r| source == format!("registry+{r}")),
                    "{name} comes from {source}, not crates.io"
                ),
            }
            let license = p["license"].as_str().unwrap_or("");
            assert!(
                satisfied(license, &allowed),
                "{name}: licence {license:?} is not allowed by deny.toml"
            );
            checked.insert(name);
        }
    }
    assert!(checked.len() > 200, "only {} crates checked", checked.len());
}

#[test]
fn no_workspace_manifest_asks_for_a_wildcard_version() {
    let m = metadata("x86_64-unknown-linux-gnu");
    let members: HashSet<&str> = m["workspace_members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for p in m["packages"].as_array().unwrap() {
        if !members.contains(p["id"].as_str().unwrap()) {
            continue;
        }
        for d in p["dependencies"].as_array().unwrap() {
            if d["path"].is_string() {
                continue;
            }
            let req = d["req"].as_str().unwrap_or("");
            assert!(
                !req.split(',').any(|r| r.trim() == "*"),
                "{} asks for {} {req}",
                p["name"],
                d["name"]
            );
        }
    }
}
