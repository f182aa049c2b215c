//! Precision gates: a precision other than f32 is used only after `duli evaluate
//! --precision P --gate` showed, on a labelled set and on a CPU with the same feature,
//! that it loses no AUC against f32 and flips no decision at the threshold. The record
//! lives beside the network it gated (`gate-<precision>-<feature>.json` next to the
//! manifest for bf16, inside the INT8 build's folder for int8) and binds what it measured:
//! the network's `.xml` and its weights (an OpenVINO `.xml` describes structure only, so
//! retrained weights keep its checksum), every finding of the manifest with its
//! threshold, and at least [`MIN_CASES`] positives and negatives per finding. A record
//! that does not match the network as loaded is not honoured. [`resolve`] turns
//! `inference.precision` into the precision actually used.

use super::int8;
use super::manifest::Manifest;
use super::precision::{CpuFlags, Precision, PrecisionSetting};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

/// Fewest positives and fewest negatives per finding for a gate to pass: below that a
/// set shows nothing about where the threshold falls.
pub const MIN_CASES: usize = 5;

/// Figures of one finding in a gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FindingGate {
    /// ROC AUC at f32.
    pub auc_f32: Option<f64>,
    /// ROC AUC at the gated precision.
    pub auc: Option<f64>,
    /// Decision threshold.
    pub threshold: f64,
    /// Cases whose decision at the threshold differs from f32's.
    pub flipped: usize,
    /// Largest |p − p_f32| of this finding.
    pub max_shift: f64,
    /// Positive cases scored at both precisions.
    #[serde(default)]
    pub positives: usize,
    /// Negative cases scored at both precisions.
    #[serde(default)]
    pub negatives: usize,
}

/// What a gate run measured and decided.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GateRecord {
    /// The precision gated.
    pub precision: Precision,
    /// The CPU feature it ran with (see [`Precision::cpu_feature`]).
    pub cpu_feature: String,
    /// When (UTC, RFC 3339).
    pub date: String,
    /// Model name and version.
    pub model: String,
    /// SHA-256 of the network run at `precision` (the INT8 IR's `.xml` for int8).
    pub network_sha256: String,
    /// SHA-256 of that network's weights (the INT8 IR's `.bin` for int8; empty when the
    /// network has no separate weights file). Records without it are not honoured.
    #[serde(default)]
    pub weights_sha256: String,
    /// SHA-256 of the f32 reference network (the manifest's).
    pub reference_sha256: String,
    /// SHA-256 of the f32 reference network's weights (the manifest's `weights_sha256`).
    #[serde(default)]
    pub reference_weights_sha256: String,
    /// The labelled set: folder, images scored, digest of its files.
    pub dataset: DatasetId,
    /// Per finding code.
    pub findings: BTreeMap<String, FindingGate>,
    /// Largest |p − p_f32| over every finding and case.
    pub max_shift: f64,
    /// 99th percentile of |p − p_f32|.
    pub p99_shift: f64,
    /// Decisions flipped at the threshold, over every finding.
    pub flipped: usize,
    /// Wall-clock milliseconds per image of the scoring run at f32 and at `precision`.
    pub ms_per_image: MsPerImage,
    /// Every finding of the manifest measured on at least [`MIN_CASES`] positives and
    /// negatives, AUC not below f32's for every finding and no decision flipped.
    pub passed: bool,
    /// Why it failed (empty when passed).
    #[serde(default)]
    pub reasons: Vec<String>,
}

/// The labelled set of a gate.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DatasetId {
    /// Folder read.
    pub dir: PathBuf,
    /// Images scored at both precisions.
    pub images: usize,
    /// SHA-256 over the scored files' names and contents, in sorted order, and the labels
    /// CSV as it was read when the set came with one.
    pub sha256: String,
}

/// Scoring speed of a gate run.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct MsPerImage {
    /// At f32.
    pub f32: f64,
    /// At the gated precision.
    pub gated: f64,
}

/// Why a gate record cannot be read or written.
#[derive(Debug, thiserror::Error)]
pub enum GateError {
    /// I/O.
    #[error("gate record {path}: {source}")]
    Io {
        /// The record.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Not a gate record.
    #[error("gate record {path}: {reason}")]
    Parse {
        /// The record.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// File name of the record of `precision` on `feature`.
pub fn file_name(precision: Precision, feature: &str) -> String {
    format!("gate-{precision}-{feature}.json")
}

/// Where the gate record of `precision` on `feature` lives for a network in `dir`.
pub fn record_path(dir: &Path, precision: Precision, feature: &str) -> PathBuf {
    dir.join(file_name(precision, feature))
}

impl GateRecord {
    /// Reads a record.
    pub fn load(path: &Path) -> Result<GateRecord, GateError> {
        let text = std::fs::read_to_string(path).map_err(|source| GateError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| GateError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })
    }

    /// Writes the record atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), GateError> {
        let io = |source| GateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = serde_json::to_string_pretty(self).map_err(|e| GateError::Parse {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, text + "\n").map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)
    }
}

/// The network run at a precision: its manifest (file pointing at the right IR), its
/// checksum, and the folder its gate records live in.
#[derive(Debug, Clone)]
pub struct Network {
    /// Precision it runs at.
    pub precision: Precision,
    /// Manifest whose `file` names the IR to load.
    pub manifest: Manifest,
    /// SHA-256 of that IR's `.xml`.
    pub sha256: String,
    /// Where its gate records live.
    pub gate_dir: PathBuf,
}

impl Network {
    /// The files this network is: its `.xml` and its weights, as the manifest it loads
    /// from names them (and the engine verifies at load).
    pub fn id(&self) -> NetworkId {
        NetworkId {
            network_sha256: self.sha256.to_ascii_lowercase(),
            weights_sha256: weights_sha256(&self.manifest),
        }
    }
}

/// The SHA-256 of a manifest's weights file, lowercase; empty when it has none.
pub fn weights_sha256(manifest: &Manifest) -> String {
    manifest
        .file
        .weights_sha256
        .as_deref()
        .unwrap_or("")
        .to_ascii_lowercase()
}

/// What a gate record binds of a network: the SHA-256 of its `.xml` (structure) and of
/// its weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkId {
    /// SHA-256 of the network file.
    pub network_sha256: String,
    /// SHA-256 of its weights file (empty when it has none).
    pub weights_sha256: String,
}

impl NetworkId {
    /// The network a record was run on.
    pub fn of_record(record: &GateRecord) -> NetworkId {
        NetworkId {
            network_sha256: record.network_sha256.to_ascii_lowercase(),
            weights_sha256: record.weights_sha256.to_ascii_lowercase(),
        }
    }
}

impl fmt::Display for NetworkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let weights = if self.weights_sha256.is_empty() {
            "none"
        } else {
            &self.weights_sha256
        };
        write!(f, "network {}, weights {weights}", self.network_sha256)
    }
}

/// The network `manifest` runs at `precision` (the INT8 build for int8).
pub fn network(manifest: &Manifest, precision: Precision) -> Result<Network, int8::Int8Error> {
    match precision {
        Precision::Int8 => {
            let q = int8::load(manifest)?;
            Ok(Network {
                precision,
                gate_dir: q.dir,
                sha256: q.sha256,
                manifest: q.manifest,
            })
        }
        Precision::F32 | Precision::Bf16 => Ok(Network {
            precision,
            manifest: manifest.clone(),
            sha256: manifest.file.sha256.to_ascii_lowercase(),
            gate_dir: manifest.dir.clone(),
        }),
    }
}

/// Why a precision has no passed gate on this CPU.
#[derive(Debug, thiserror::Error)]
pub enum NoPassedGate {
    /// The network of that precision cannot be found (the INT8 build).
    #[error(transparent)]
    Network(#[from] int8::Int8Error),
    /// No gate record for this CPU's feature.
    #[error("{precision} has no gate record for this CPU ({feature}) at {}: {}", .path.display(), how(*.precision))]
    Missing {
        /// The precision.
        precision: Precision,
        /// This CPU's feature for it.
        feature: &'static str,
        /// The record looked for.
        path: PathBuf,
    },
    /// The record cannot be read.
    #[error(transparent)]
    Unreadable(GateError),
    /// The record is of another network: another `.xml` or other weights.
    #[error("{}: the gate is for another network: it was run on {recorded}, this one is {actual}: {}", .path.display(), how(*.precision))]
    OtherNetwork {
        /// The record.
        path: PathBuf,
        /// The precision.
        precision: Precision,
        /// What the gate was run on.
        recorded: NetworkId,
        /// This network.
        actual: NetworkId,
    },
    /// The record measured other findings or thresholds than the manifest's.
    #[error("{}: the gate was run with other settings than the manifest's ({}): {}", .path.display(), .differences.join("; "), how(*.precision))]
    OtherSettings {
        /// The record.
        path: PathBuf,
        /// The precision.
        precision: Precision,
        /// What differs, per finding.
        differences: Vec<String>,
    },
    /// The record's set had too few cases of a finding to show anything.
    #[error("{}: the gate's set is too small ({}): {}", .path.display(), .shortfalls.join("; "), how(*.precision))]
    TooFewCases {
        /// The record.
        path: PathBuf,
        /// The precision.
        precision: Precision,
        /// Which findings had too few positives or negatives.
        shortfalls: Vec<String>,
    },
    /// The record is of another precision or CPU feature.
    #[error("{}: not a record of {precision} on {feature}", .path.display())]
    OtherTarget {
        /// The record.
        path: PathBuf,
        /// The precision.
        precision: Precision,
        /// This CPU's feature for it.
        feature: &'static str,
    },
    /// The precision failed its gate.
    #[error("{precision} failed its gate on {date} ({}): {}", .path.display(), .reasons.join("; "))]
    Failed {
        /// The precision.
        precision: Precision,
        /// When the gate ran.
        date: String,
        /// The record.
        path: PathBuf,
        /// Why it failed.
        reasons: Vec<String>,
    },
}

/// How to make a gate record of `precision`.
fn how(precision: Precision) -> String {
    format!("run `duli evaluate --precision {precision} --gate` on a labelled set with at least {MIN_CASES} positives and {MIN_CASES} negatives of every finding")
}

/// How `record` differs from what `manifest` decides with: every finding (non-background
/// label) of the manifest must be in the record, at the manifest's threshold, and the
/// record must hold no other. Empty when they agree.
pub fn settings_differences(record: &GateRecord, manifest: &Manifest) -> Vec<String> {
    let mut out = Vec::new();
    for (i, label) in manifest.labels.iter().enumerate() {
        if label.background {
            continue;
        }
        let threshold = f64::from(manifest.threshold(i));
        match record.findings.get(&label.code) {
            None => out.push(format!("{}: not gated", label.code)),
            Some(f) if f.threshold != threshold => out.push(format!(
                "{}: gated at threshold {}, the manifest's is {threshold}",
                label.code, f.threshold
            )),
            Some(_) => {}
        }
    }
    for code in record.findings.keys() {
        if !manifest
            .labels
            .iter()
            .any(|l| !l.background && &l.code == code)
        {
            out.push(format!("{code}: not a finding of the manifest"));
        }
    }
    out
}

/// The findings of `record` measured on fewer than [`MIN_CASES`] positives or
/// negatives. Empty when every one had enough.
pub fn shortfalls(record: &GateRecord) -> Vec<String> {
    record
        .findings
        .iter()
        .filter(|(_, f)| f.positives < MIN_CASES || f.negatives < MIN_CASES)
        .map(|(code, f)| {
            format!(
                "{code}: {} positive(s) and {} negative(s), at least {MIN_CASES} of each are needed",
                f.positives, f.negatives
            )
        })
        .collect()
}

/// A passed gate for `net` on this CPU, or why there is none: the record must be of this
/// precision and CPU feature, of this network's `.xml` and weights, of every finding of
/// its manifest at the manifest's thresholds, measured on at least [`MIN_CASES`]
/// positives and negatives per finding, and passed.
pub fn passed_gate(net: &Network, flags: &CpuFlags) -> Result<GateRecord, NoPassedGate> {
    let feature = net.precision.cpu_feature(flags);
    let path = record_path(&net.gate_dir, net.precision, feature);
    let precision = net.precision;
    let record = GateRecord::load(&path).map_err(|e| match e {
        GateError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            NoPassedGate::Missing {
                precision,
                feature,
                path: path.clone(),
            }
        }
        e => NoPassedGate::Unreadable(e),
    })?;
    let (recorded, actual) = (NetworkId::of_record(&record), net.id());
    if recorded != actual {
        return Err(NoPassedGate::OtherNetwork {
            path,
            precision,
            recorded,
            actual,
        });
    }
    if record.cpu_feature != feature || record.precision != net.precision {
        return Err(NoPassedGate::OtherTarget {
            path,
            precision,
            feature,
        });
    }
    let differences = settings_differences(&record, &net.manifest);
    if !differences.is_empty() {
        return Err(NoPassedGate::OtherSettings {
            path,
            precision,
            differences,
        });
    }
    let shortfalls = shortfalls(&record);
    if !shortfalls.is_empty() {
        return Err(NoPassedGate::TooFewCases {
            path,
            precision,
            shortfalls,
        });
    }
    if !record.passed {
        return Err(NoPassedGate::Failed {
            precision,
            date: record.date,
            path,
            reasons: record.reasons,
        });
    }
    Ok(record)
}

/// The precision `inference.precision` resolves to on this CPU.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The network to load.
    pub network: Network,
    /// Why this precision (for the log): the gate used, or why another was not.
    pub reason: String,
}

/// Resolves `setting`: f32 as is; bf16 or int8 only with a passed gate for this CPU's
/// feature (else f32, saying why); `auto` the fastest precision with a passed gate (by the
/// gate runs' milliseconds per image), f32 when none passed or none is faster.
pub fn resolve(manifest: &Manifest, setting: PrecisionSetting, flags: &CpuFlags) -> Resolved {
    let f32_net = || network(manifest, Precision::F32);
    let reference = |reason: String| Resolved {
        network: Network {
            precision: Precision::F32,
            manifest: manifest.clone(),
            sha256: manifest.file.sha256.to_ascii_lowercase(),
            gate_dir: manifest.dir.clone(),
        },
        reason,
    };
    let gated = |p: Precision| -> Result<(Network, GateRecord), NoPassedGate> {
        let net = network(manifest, p)?;
        let record = passed_gate(&net, flags)?;
        Ok((net, record))
    };
    match setting {
        PrecisionSetting::Fixed(Precision::F32) => match f32_net() {
            Ok(network) => Resolved {
                network,
                reason: "configured".into(),
            },
            Err(e) => reference(e.to_string()),
        },
        PrecisionSetting::Fixed(p) => match gated(p) {
            Ok((network, r)) => Resolved {
                network,
                reason: format!("configured; gate passed on {} ({})", r.date, r.cpu_feature),
            },
            Err(why) => reference(format!("{p} is not used: {why}; running f32")),
        },
        PrecisionSetting::Auto => {
            let mut best: Option<(Network, GateRecord)> = None;
            let mut skipped = Vec::new();
            for p in [Precision::Bf16, Precision::Int8] {
                if !p.differs_from_f32(flags) {
                    skipped.push(format!("{p}: no native support on this CPU"));
                    continue;
                }
                match gated(p) {
                    Ok((net, r)) if r.ms_per_image.gated < r.ms_per_image.f32 => {
                        let faster = best
                            .as_ref()
                            .is_none_or(|(_, b)| r.ms_per_image.gated < b.ms_per_image.gated);
                        if faster {
                            best = Some((net, r));
                        }
                    }
                    Ok((_, r)) => skipped.push(format!(
                        "{p}: passed but not faster ({:.1} vs {:.1} ms per image)",
                        r.ms_per_image.gated, r.ms_per_image.f32
                    )),
                    Err(why) => skipped.push(why.to_string()),
                }
            }
            match best {
                Some((network, r)) => Resolved {
                    reason: format!(
                        "auto: fastest gated precision on {} ({:.1} ms per image vs {:.1} at f32, gate of {})",
                        r.cpu_feature, r.ms_per_image.gated, r.ms_per_image.f32, r.date
                    ),
                    network,
                },
                None => reference(format!("auto: f32 ({})", skipped.join("; "))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(dir: &Path) -> Manifest {
        crate::infer::manifest::tiny_manifest(dir, "gate-test", &"a".repeat(64))
    }

    fn record(m: &Manifest, feature: &str, passed: bool, ms: f64) -> GateRecord {
        GateRecord {
            precision: Precision::Bf16,
            cpu_feature: feature.into(),
            date: "2026-12-03T00:00:00Z".into(),
            model: "gate-test 1".into(),
            network_sha256: m.file.sha256.clone(),
            weights_sha256: weights_sha256(m),
            reference_sha256: m.file.sha256.clone(),
            reference_weights_sha256: weights_sha256(m),
            dataset: DatasetId {
                dir: "/set".into(),
                images: 16,
                sha256: "x".into(),
            },
            findings: [(
                "A".to_string(),
                FindingGate {
                    auc_f32: Some(0.9),
                    auc: Some(0.9),
                    threshold: 0.5,
                    flipped: 0,
                    max_shift: 0.01,
                    positives: 8,
                    negatives: 8,
                },
            )]
            .into_iter()
            .collect(),
            max_shift: 0.01,
            p99_shift: 0.01,
            flipped: 0,
            ms_per_image: MsPerImage {
                f32: 20.0,
                gated: ms,
            },
            passed,
            reasons: if passed {
                vec![]
            } else {
                vec!["A: 1 flipped".into()]
            },
        }
    }

    /// With both reduced precisions gated and faster than f32, `auto` takes the faster of
    /// the two; a passed gate of a precision this CPU cannot compute natively is ignored.
    #[test]
    fn auto_takes_the_fastest_passed_precision() {
        let tmp = tempfile::tempdir().unwrap();
        let m = manifest(tmp.path());
        // An INT8 build beside the manifest (its files need only match their record).
        let int8_dir = m.dir.join("int8");
        std::fs::create_dir_all(&int8_dir).unwrap();
        for (name, body) in [("m-int8.xml", "<net/>"), ("m-int8.bin", "weights")] {
            std::fs::write(int8_dir.join(name), body).unwrap();
        }
        let sha = |n: &str| crate::infer::manifest::sha256_file(&int8_dir.join(n)).unwrap();
        let build = serde_json::json!({
            "source_sha256": m.file.sha256,
            "xml": "m-int8.xml", "xml_sha256": sha("m-int8.xml"),
            "bin": "m-int8.bin", "bin_sha256": sha("m-int8.bin"),
        });
        std::fs::write(int8_dir.join(int8::RECORD), build.to_string()).unwrap();
        let int8_net = network(&m, Precision::Int8).unwrap();

        let flags = CpuFlags::parse("flags : avx512f amx_bf16 avx512_bf16 amx_int8 avx512_vnni\n");
        let save_on = |flags: &CpuFlags, p: Precision, ms: f64| {
            let feature = p.cpu_feature(flags);
            let mut r = record(&m, feature, true, ms);
            r.precision = p;
            let (dir, sha) = match p {
                Precision::Int8 => (int8_net.gate_dir.clone(), int8_net.sha256.clone()),
                _ => (m.dir.clone(), m.file.sha256.clone()),
            };
            r.network_sha256 = sha;
            if p == Precision::Int8 {
                r.weights_sha256 = weights_sha256(&int8_net.manifest);
            }
            r.save(&record_path(&dir, p, feature)).unwrap();
        };
        let auto = || resolve(&m, PrecisionSetting::Auto, &flags);
        save_on(&flags, Precision::Bf16, 8.0);
        save_on(&flags, Precision::Int8, 5.0);
        assert_eq!(
            auto().network.precision,
            Precision::Int8,
            "{}",
            auto().reason
        );
        save_on(&flags, Precision::Int8, 12.0);
        assert_eq!(
            auto().network.precision,
            Precision::Bf16,
            "{}",
            auto().reason
        );
        // Without native bf16 (AVX-512 VNNI only), the bf16 gate does not count.
        let vnni = CpuFlags::parse("flags : avx512f avx512_vnni\n");
        save_on(&vnni, Precision::Int8, 12.0);
        let on_vnni = resolve(&m, PrecisionSetting::Auto, &vnni);
        assert_eq!(
            on_vnni.network.precision,
            Precision::Int8,
            "{}",
            on_vnni.reason
        );
    }

    /// The test manifest with a weights file of SHA-256 `weights` beside its `.xml`.
    fn manifest_with_weights(dir: &Path, weights: &str) -> Manifest {
        let mut m = manifest(dir);
        m.file.weights = Some("net.bin".into());
        m.file.weights_sha256 = Some(weights.into());
        m
    }

    /// A passed bf16 gate of `m` on AVX512-BF16, as the JSON `duli evaluate --gate` writes.
    fn passed_json(m: &Manifest) -> serde_json::Value {
        serde_json::json!({
            "precision": "bf16",
            "cpu_feature": "avx512-bf16",
            "date": "2026-12-03T00:00:00Z",
            "model": "gate-test 1",
            "network_sha256": m.file.sha256,
            "weights_sha256": m.file.weights_sha256,
            "reference_sha256": m.file.sha256,
            "reference_weights_sha256": m.file.weights_sha256,
            "dataset": { "dir": "/set", "images": 16, "sha256": "x" },
            "findings": { "A": {
                "auc_f32": 0.9, "auc": 0.9, "threshold": 0.5, "flipped": 0,
                "max_shift": 0.01, "positives": 8, "negatives": 8
            } },
            "max_shift": 0.01,
            "p99_shift": 0.01,
            "flipped": 0,
            "ms_per_image": { "f32": 20.0, "gated": 8.0 },
            "passed": true,
            "reasons": []
        })
    }

    fn bf16_net(m: &Manifest) -> Network {
        network(m, Precision::Bf16).unwrap()
    }

    /// Weights retrained or replaced under the same `.xml` (which describes structure
    /// only) are another network: a gate passed on the old weights enables nothing.
    #[test]
    fn a_gate_of_other_weights_is_for_another_network() {
        let tmp = tempfile::tempdir().unwrap();
        let flags = CpuFlags::parse("flags : avx512f avx512_bf16\n");
        let gated = manifest_with_weights(tmp.path(), &"b".repeat(64));
        let path = record_path(tmp.path(), Precision::Bf16, "avx512-bf16");
        std::fs::write(&path, passed_json(&gated).to_string()).unwrap();
        assert!(passed_gate(&bf16_net(&gated), &flags).is_ok());

        let retrained = manifest_with_weights(tmp.path(), &"c".repeat(64));
        assert_eq!(retrained.file.sha256, gated.file.sha256);
        let err = passed_gate(&bf16_net(&retrained), &flags).unwrap_err();
        assert!(matches!(err, NoPassedGate::OtherNetwork { .. }), "{err}");
        assert!(err.to_string().contains(&"c".repeat(64)), "{err}");
        let r = resolve(&retrained, PrecisionSetting::Fixed(Precision::Bf16), &flags);
        assert_eq!(r.network.precision, Precision::F32);
        assert!(r.reason.contains("another network"), "{}", r.reason);
        let auto = resolve(&retrained, PrecisionSetting::Auto, &flags);
        assert_eq!(auto.network.precision, Precision::F32, "{}", auto.reason);

        // A record that binds no weights (the earlier format) is no gate of these either.
        let mut unbound = passed_json(&gated);
        if let Some(o) = unbound.as_object_mut() {
            o.remove("weights_sha256");
        }
        std::fs::write(&path, unbound.to_string()).unwrap();
        let err = passed_gate(&bf16_net(&gated), &flags).unwrap_err();
        assert!(matches!(err, NoPassedGate::OtherNetwork { .. }), "{err}");
    }

    /// A gate holds for the findings and thresholds it measured, on a set large enough to
    /// show something: another threshold, an unmeasured finding or a handful of images
    /// leaves f32 in place.
    #[test]
    fn a_gate_holds_only_for_every_finding_at_its_threshold_on_enough_cases() {
        let tmp = tempfile::tempdir().unwrap();
        let flags = CpuFlags::parse("flags : avx512f avx512_bf16\n");
        let bf16 = PrecisionSetting::Fixed(Precision::Bf16);
        let m = manifest_with_weights(tmp.path(), &"b".repeat(64));
        let path = record_path(tmp.path(), Precision::Bf16, "avx512-bf16");
        std::fs::write(&path, passed_json(&m).to_string()).unwrap();
        assert!(passed_gate(&bf16_net(&m), &flags).is_ok());
        assert_eq!(resolve(&m, bf16, &flags).network.precision, Precision::Bf16);

        // Gated at 0.5, the manifest now decides at 0.99943.
        let mut strict = m.clone();
        strict.labels[0].threshold = Some(0.99943);
        let err = passed_gate(&bf16_net(&strict), &flags).unwrap_err();
        assert!(err.to_string().contains("threshold"), "{err}");
        let r = resolve(&strict, bf16, &flags);
        assert_eq!(r.network.precision, Precision::F32, "{}", r.reason);

        // A second finding the gate never measured.
        let mut two = m.clone();
        let mut b = two.labels[0].clone();
        b.code = "B".into();
        b.name = "B".into();
        two.labels.push(b);
        let err = passed_gate(&bf16_net(&two), &flags).unwrap_err();
        assert!(err.to_string().contains("B: not gated"), "{err}");
        assert_eq!(
            resolve(&two, bf16, &flags).network.precision,
            Precision::F32
        );

        // Two images, one of each: passed, but too few to count.
        let mut small = passed_json(&m);
        small["dataset"]["images"] = 2.into();
        small["findings"]["A"]["positives"] = 1.into();
        small["findings"]["A"]["negatives"] = 1.into();
        std::fs::write(&path, small.to_string()).unwrap();
        let err = passed_gate(&bf16_net(&m), &flags).unwrap_err();
        assert!(err.to_string().contains("at least 5"), "{err}");
        assert_eq!(resolve(&m, bf16, &flags).network.precision, Precision::F32);
    }

    #[test]
    fn bf16_is_used_only_with_a_passed_gate_for_this_cpu_feature() {
        let tmp = tempfile::tempdir().unwrap();
        let m = manifest(tmp.path());
        let amx = CpuFlags::parse("flags : avx512f amx_bf16 avx512_bf16\n");
        let bf16 = PrecisionSetting::Fixed(Precision::Bf16);
        // No record: f32, saying how to gate.
        let r = resolve(&m, bf16, &amx);
        assert_eq!(r.network.precision, Precision::F32);
        assert!(r.reason.contains("--gate"), "{}", r.reason);
        // A failed record: still f32, with the failure.
        let path = record_path(tmp.path(), Precision::Bf16, "amx-bf16");
        record(&m, "amx-bf16", false, 8.0).save(&path).unwrap();
        let r = resolve(&m, bf16, &amx);
        assert_eq!(r.network.precision, Precision::F32);
        assert!(r.reason.contains("flipped"), "{}", r.reason);
        // Passed: bf16, fixed or auto.
        record(&m, "amx-bf16", true, 8.0).save(&path).unwrap();
        assert_eq!(resolve(&m, bf16, &amx).network.precision, Precision::Bf16);
        let auto = resolve(&m, PrecisionSetting::Auto, &amx);
        assert_eq!(auto.network.precision, Precision::Bf16, "{}", auto.reason);
        // The record is for AMX: a CPU with only AVX512-BF16 has no gate.
        let avx512 = CpuFlags::parse("flags : avx512f avx512_bf16\n");
        assert_eq!(resolve(&m, bf16, &avx512).network.precision, Precision::F32);
        // Passed but slower than f32: auto keeps f32.
        record(&m, "amx-bf16", true, 30.0).save(&path).unwrap();
        let auto = resolve(&m, PrecisionSetting::Auto, &amx);
        assert_eq!(auto.network.precision, Precision::F32);
        assert!(auto.reason.contains("not faster"), "{}", auto.reason);
        // A record of another network is not honoured.
        let mut other = record(&m, "amx-bf16", true, 8.0);
        other.network_sha256 = "b".repeat(64);
        other.save(&path).unwrap();
        assert_eq!(resolve(&m, bf16, &amx).network.precision, Precision::F32);
        // int8 without a build: f32, naming make models.
        let r = resolve(&m, PrecisionSetting::Fixed(Precision::Int8), &amx);
        assert_eq!(r.network.precision, Precision::F32);
        assert!(r.reason.contains("make models"), "{}", r.reason);
        assert_eq!(
            resolve(&m, PrecisionSetting::Fixed(Precision::F32), &amx)
                .network
                .precision,
            Precision::F32
        );
    }
}
