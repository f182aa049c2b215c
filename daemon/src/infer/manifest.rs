//! The model manifest (`models/<name>/model.toml`): which file to load, what the network
//! expects as input, what its output means, the findings it reports and the checksums its
//! files must match. Any model is loaded from its manifest alone.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// A fault of a manifest: the key and why it is wrong.
type Fault = (&'static str, &'static str);

/// Why a manifest (or the files it names) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file cannot be read.
    #[error("cannot read model manifest {path}: {source}")]
    Read {
        /// The manifest path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The manifest is not valid TOML of the expected shape.
    #[error("model manifest {path}: {message}")]
    Parse {
        /// The manifest path.
        path: PathBuf,
        /// The parser's message (names the key).
        message: String,
    },
    /// A value is inconsistent (e.g. no labels, bad channel count).
    #[error("model manifest {path}: {key}: {reason}")]
    Invalid {
        /// The manifest path.
        path: PathBuf,
        /// The offending key.
        key: String,
        /// Why it is not acceptable.
        reason: String,
    },
    /// A model file named by the manifest is missing or unreadable.
    #[error("model file {path} cannot be read ({source}); run scripts/setup-models.sh")]
    ModelFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A model file's SHA-256 differs from the manifest's.
    #[error("model file {path} has SHA-256 {actual}, but the manifest says {expected}: refusing to load it (wrong or corrupt weights; run scripts/setup-models.sh)")]
    Checksum {
        /// The file.
        path: PathBuf,
        /// The checksum in the manifest.
        expected: String,
        /// The checksum of the file on disk.
        actual: String,
    },
}

/// A model manifest, as read from `model.toml`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short model name (also the folder name under `models/`).
    pub name: String,
    /// Version of this model build (weights + conversion).
    pub version: String,
    /// One-line description for people.
    #[serde(default)]
    pub description: String,
    /// Coding scheme designator of the label codes (DICOM style; `99…` is a local scheme).
    #[serde(default = "default_scheme")]
    pub coding_scheme: String,
    /// The network file(s) and their checksums.
    pub file: ModelFile,
    /// What the network expects as input.
    pub input: InputSpec,
    /// What the network's output means.
    pub output: OutputSpec,
    /// One entry per output index, in output order.
    pub labels: Vec<Label>,
    /// Threshold for labels that do not set their own.
    #[serde(default = "default_threshold")]
    pub default_threshold: f32,
    /// Occlusion heatmap settings.
    #[serde(default)]
    pub heatmap: HeatmapSpec,
    /// The studies the model is for; others are recorded as not applicable.
    #[serde(default)]
    pub intended_use: IntendedUse,
    /// Folder of the manifest; relative file paths resolve against it.
    #[serde(skip)]
    pub dir: PathBuf,
}

/// A label's code or name as data sets may spell it: lower case, with `_` and `-` read as
/// a space (`Pleural_Thickening`, `pleural thickening`). Two labels of a manifest never
/// share one.
pub fn label_key(text: &str) -> String {
    text.trim()
        .chars()
        .map(|c| match c {
            '_' | '-' => ' ',
            c => c.to_ascii_lowercase(),
        })
        .collect()
}

/// Whether `text` fits a DICOM value of `max` characters where results carry it (a Code
/// Value is an SH of 16, a Code Meaning or model name an LO of 64; HL7's CE.1 holds 20):
/// not blank, and without a backslash (DICOM's value separator), an HL7 delimiter or a
/// control character.
fn fits_text(text: &str, max: usize) -> bool {
    !text.trim().is_empty()
        && text.chars().count() <= max
        && !text.contains(['|', '^', '~', '\\', '&'])
        && !text.chars().any(char::is_control)
}

/// The coding scheme of label codes when a manifest names none: this appliance's private
/// scheme (DICOM PS3.16 §8.2: `99` + an organisation's abbreviation).
pub const LOCAL_SCHEME: &str = "99DULI";

fn default_scheme() -> String {
    LOCAL_SCHEME.into()
}

fn default_threshold() -> f32 {
    0.5
}

/// The network file and its checksums.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelFile {
    /// OpenVINO IR `.xml` or `.onnx`, relative to the manifest's folder.
    pub path: PathBuf,
    /// SHA-256 (hex) of `path`.
    pub sha256: String,
    /// Weights file of an IR (`.bin`), relative to the manifest's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights: Option<PathBuf>,
    /// SHA-256 (hex) of `weights`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weights_sha256: Option<String>,
}

/// Memory layout of the input tensor.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub enum Layout {
    /// Batch, height, width, channels.
    NHWC,
    /// Batch, channels, height, width.
    NCHW,
}

/// How the display image is cropped before resizing.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    /// Keep the whole image (a squash resize when the aspect ratio differs).
    #[default]
    None,
    /// Cut the largest centred square first.
    CenterSquare,
}

/// How the image is resized to the input size.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResizeMethod {
    /// Nearest neighbour, sampling exactly where PIL's `Image.NEAREST` samples.
    NearestPil,
    /// Linear (triangle) filter with antialiasing when shrinking.
    Bilinear,
}

/// How 8-bit display values `v` become input values.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Normalisation {
    /// Linear map of 0..255 onto `min..max`: `x = v / (255 / (max − min)) + min`.
    Range {
        /// Value of display level 0.
        min: f32,
        /// Value of display level 255.
        max: f32,
    },
    /// `x = (v / 255 − mean[c]) / std[c]` per channel (one value applies to all channels).
    MeanStd {
        /// Per-channel means (of v/255).
        mean: Vec<f32>,
        /// Per-channel standard deviations (of v/255).
        std: Vec<f32>,
    },
}

/// The input tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Name of the input tensor.
    pub name: String,
    /// Tensor layout.
    pub layout: Layout,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
    /// 1 (grey) or 3 (grey copied into R, G and B).
    pub channels: u32,
    /// Crop before resize.
    #[serde(default)]
    pub crop: Crop,
    /// Resize method.
    pub resize: ResizeMethod,
    /// Normalisation of display values.
    pub normalise: Normalisation,
}

/// What the raw output values are.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// The network outputs probabilities already.
    None,
    /// Independent logits: probability = sigmoid(logit) (multi-label).
    Sigmoid,
    /// Mutually exclusive logits: probabilities = softmax(logits).
    Softmax,
}

/// The output tensor.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Name of the output tensor (the first output when absent).
    #[serde(default)]
    pub name: Option<String>,
    /// What turns raw outputs into probabilities.
    pub activation: Activation,
}

/// One output index.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Label {
    /// Code of the finding (in `coding_scheme`).
    pub code: String,
    /// Display name of the finding.
    pub name: String,
    /// Decision threshold (else the manifest's `default_threshold`).
    #[serde(default)]
    pub threshold: Option<f32>,
    /// A background class (e.g. NORMAL): never reported as a finding.
    #[serde(default)]
    pub background: bool,
    /// The finding in a standard terminology (SNOMED CT, DICOM, RadLex), e.g.
    /// `standard = { code = "233604007", scheme = "SCT", meaning = "Pneumonia" }`. Results,
    /// SRs and HL7 carry it first and the local code as the alternate; without it only the
    /// local code is sent.
    #[serde(default)]
    pub standard: Option<crate::result::Concept>,
}

/// The intended use (`[intended_use]`): the population and images the model was trained
/// and validated on. Empty lists and absent bounds do not restrict.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IntendedUse {
    /// The population for people (e.g. "pediatric chest radiographs, 1-5 years").
    pub population: String,
    /// Modalities (0008,0060) the model is for, e.g. `["CR", "DX"]`.
    pub modalities: Vec<String>,
    /// View positions (0018,5101) the model is for; an image without one is analysed.
    pub views: Vec<String>,
    /// Body parts (0018,015) the model is for; an image without one is analysed.
    pub body_parts: Vec<String>,
    /// Youngest patient, in years, inclusive of the whole unit (see
    /// [`super::age::Completed::within`]).
    pub age_min_years: Option<f64>,
    /// Oldest patient, in years, inclusive of the whole unit: 5 admits a child until the
    /// day before the sixth birthday.
    pub age_max_years: Option<f64>,
    /// Shortest image side, in pixels.
    pub min_image_size: Option<u32>,
}

/// How a model's heatmaps are made (`[heatmap] method`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HeatmapMethod {
    /// Occlusion sensitivity: grid² masked inferences per image, on a low-priority worker
    /// after the result.
    #[default]
    Occlusion,
    /// Grad-CAM from the last convolutional block (`features`), in the result's own
    /// inference pass (see [`super::cam`]).
    Cam,
}

/// Heatmap settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct HeatmapSpec {
    /// How heatmaps are made.
    pub method: HeatmapMethod,
    /// For `cam`: the IR layer whose output is the last convolutional block (the input of
    /// the global average pooling).
    pub features: Option<String>,
    /// Cells per side of the occlusion grid (grid² masked inferences per image).
    pub grid: u32,
    /// Masks per inference call.
    pub batch: u32,
}

impl Default for HeatmapSpec {
    fn default() -> Self {
        Self {
            method: HeatmapMethod::Occlusion,
            features: None,
            grid: 8,
            batch: 8,
        }
    }
}

impl Manifest {
    /// Reads and validates the manifest at `path` (checksums are checked by
    /// [`Manifest::verify_files`]).
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Manifest::parse(&text, path)
    }

    /// Parses and validates `text`, the manifest read from `path` (its files are named
    /// relative to `path`'s folder).
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let mut m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse {
            path: path.to_path_buf(),
            message: e.message().to_string(),
        })?;
        m.dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        m.validate(path)?;
        Ok(m)
    }

    /// Checks the manifest read from `path`, section by section; the first fault found is
    /// the error.
    fn validate(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |(key, reason): Fault| ManifestError::Invalid {
            path: path.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        };
        self.check_label_set().map_err(bad)?;
        self.validate_labels(path)?;
        self.check_result_text().map_err(bad)?;
        self.check_input().map_err(bad)?;
        self.check_files().map_err(bad)?;
        self.check_intended_use().map_err(bad)?;
        if self.heatmap.grid == 0 || self.heatmap.batch == 0 {
            return Err(bad(("heatmap", "grid and batch must be positive")));
        }
        Ok(())
    }

    /// At least one label that is not a background class; `cam` heatmaps name their layer.
    fn check_label_set(&self) -> Result<(), Fault> {
        if self.labels.is_empty() {
            return Err(("labels", "at least one label is required"));
        }
        if !self.labels.iter().any(|l| !l.background) {
            return Err(("labels", "every label is a background class"));
        }
        if self.heatmap.method == HeatmapMethod::Cam
            && self.heatmap.features.as_deref().is_none_or(str::is_empty)
        {
            return Err((
                "heatmap.features",
                "method = \"cam\" needs the layer of the last convolutional block",
            ));
        }
        Ok(())
    }

    /// The model's name and version, the coding scheme and each label's standard concept
    /// fit where results carry them ([`fits_text`]); the labels' own codes and names are
    /// checked with the labels.
    fn check_result_text(&self) -> Result<(), Fault> {
        // The model's name is the Manufacturer's Model Name (LO) of every result object.
        if !fits_text(&self.name, 64) || !fits_text(&self.version, 64) {
            return Err((
                "name",
                "name and version need 1-64 characters, none of |^~\\& or a control character",
            ));
        }
        if !fits_text(&self.coding_scheme, 16) {
            return Err((
                "coding_scheme",
                "needs 1-16 characters, none of |^~\\& or a control character",
            ));
        }
        for c in self.labels.iter().filter_map(|l| l.standard.as_ref()) {
            if !fits_text(&c.code, 16) || !fits_text(&c.scheme, 16) || !fits_text(&c.meaning, 64) {
                return Err((
                    "labels.standard",
                    "code and scheme need 1-16 characters, meaning 1-64, none of |^~\\& or \
                     a control character",
                ));
            }
        }
        Ok(())
    }

    /// The input's shape and normalisation, and an output activation the labels allow.
    fn check_input(&self) -> Result<(), Fault> {
        if self.input.channels != 1 && self.input.channels != 3 {
            return Err(("input.channels", "must be 1 or 3"));
        }
        if self.input.width == 0 || self.input.height == 0 {
            return Err(("input.width/height", "must be positive"));
        }
        if self.output.activation == Activation::Softmax && self.labels.len() < 2 {
            return Err(("output.activation", "softmax needs two or more labels"));
        }
        match &self.input.normalise {
            Normalisation::MeanStd { mean, std } => {
                let n = self.input.channels as usize;
                if !(mean.len() == 1 || mean.len() == n) || !(std.len() == 1 || std.len() == n) {
                    return Err(("input.normalise", "mean/std need 1 or `channels` values"));
                }
                if std.contains(&0.0) {
                    return Err(("input.normalise.std", "must not be zero"));
                }
            }
            Normalisation::Range { min, max } if min == max => {
                return Err(("input.normalise", "min and max must differ"));
            }
            _ => {}
        }
        Ok(())
    }

    /// The network's checksum, and the weights' when the network has a separate file.
    fn check_files(&self) -> Result<(), Fault> {
        let is_hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
        if !is_hex(&self.file.sha256) {
            return Err((
                "file.sha256",
                "a 64-digit hex SHA-256 is required (a model without a recorded checksum is not loaded)",
            ));
        }
        match (&self.file.weights, &self.file.weights_sha256) {
            (Some(_), Some(h)) if is_hex(h) => Ok(()),
            (Some(_), _) => Err(("file.weights_sha256", "a 64-digit hex SHA-256 is required")),
            (None, Some(_)) => Err(("file.weights", "weights_sha256 without weights")),
            (None, None) => Ok(()),
        }
    }

    /// The intended patient ages: years between 0 and 150, the lower not above the upper.
    fn check_intended_use(&self) -> Result<(), Fault> {
        let iu = &self.intended_use;
        for (key, v) in [
            ("intended_use.age_min_years", iu.age_min_years),
            ("intended_use.age_max_years", iu.age_max_years),
        ] {
            if v.is_some_and(|v| !(0.0..=150.0).contains(&v)) {
                return Err((key, "must be between 0 and 150 years"));
            }
        }
        if let (Some(lo), Some(hi)) = (iu.age_min_years, iu.age_max_years) {
            if lo > hi {
                return Err(("intended_use", "age_min_years is above age_max_years"));
            }
        }
        Ok(())
    }

    /// Thresholds are probabilities (finite, in [0, 1]); label codes and names fit a DICOM
    /// Code Value and Code Meaning ([`fits_text`]), and no two labels read alike
    /// ([`label_key`]): results, HL7 and SR tell findings apart by their codes, and
    /// `duli evaluate` finds them by code or name.
    fn validate_labels(&self, path: &Path) -> Result<(), ManifestError> {
        let bad = |key: String, reason: String| ManifestError::Invalid {
            path: path.to_path_buf(),
            key,
            reason,
        };
        let probability = |t: f32| t.is_finite() && (0.0..=1.0).contains(&t);
        if !probability(self.default_threshold) {
            return Err(bad(
                "default_threshold".into(),
                format!(
                    "{} is not a probability between 0 and 1",
                    self.default_threshold
                ),
            ));
        }
        for (i, l) in self.labels.iter().enumerate() {
            if let Some(t) = l.threshold.filter(|t| !probability(*t)) {
                return Err(bad(
                    format!("labels[{i}].threshold"),
                    format!("{t} is not a probability between 0 and 1"),
                ));
            }
            for (key, text, max, what) in [
                ("code", &l.code, 16, "a DICOM Code Value"),
                ("name", &l.name, 64, "a DICOM Code Meaning"),
            ] {
                if !fits_text(text, max) {
                    return Err(bad(
                        format!("labels[{i}].{key}"),
                        format!(
                            "needs 1-{max} characters ({what}), none of |^~\\& or a control \
                             character"
                        ),
                    ));
                }
            }
            if let Some(j) = self.labels[..i].iter().position(|o| o.code == l.code) {
                return Err(bad(
                    format!("labels[{i}].code"),
                    format!("{:?} is already the code of labels[{j}]", l.code),
                ));
            }
            // A label folder or CSV row names one label only (`duli evaluate`).
            let own = [label_key(&l.code), label_key(&l.name)];
            if let Some(j) = self.labels[..i].iter().position(|o| {
                [&o.code, &o.name]
                    .iter()
                    .any(|k| own.contains(&label_key(k)))
            }) {
                return Err(bad(
                    format!("labels[{i}].name"),
                    format!(
                        "{:?} / {:?} reads as the code or name of labels[{j}] (case, _, - and \
                         spaces aside)",
                        l.code, l.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Absolute (or working-directory relative) path of the network file.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.file.path)
    }

    /// Path of the weights file of an IR.
    pub fn weights_path(&self) -> Option<PathBuf> {
        self.file.weights.as_ref().map(|w| self.dir.join(w))
    }

    /// Checks every file against its SHA-256. Returns the network file's checksum.
    pub fn verify_files(&self) -> Result<String, ManifestError> {
        verify(&self.model_path(), &self.file.sha256)?;
        if let (Some(w), Some(h)) = (self.weights_path(), &self.file.weights_sha256) {
            verify(&w, h)?;
        }
        Ok(self.file.sha256.to_ascii_lowercase())
    }

    /// The decision threshold of label `i`.
    pub fn threshold(&self, i: usize) -> f32 {
        self.labels
            .get(i)
            .and_then(|l| l.threshold)
            .unwrap_or(self.default_threshold)
    }

    /// Number of values in one input tensor of batch 1.
    pub fn input_len(&self) -> usize {
        (self.input.width * self.input.height * self.input.channels) as usize
    }
}

fn verify(path: &Path, expected: &str) -> Result<(), ManifestError> {
    let actual = sha256_file(path).map_err(|source| ManifestError::ModelFile {
        path: path.to_path_buf(),
        source,
    })?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ManifestError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_ascii_lowercase(),
            actual,
        });
    }
    Ok(())
}

/// SHA-256 of a file, as lowercase hex (streamed by the one hashing helper,
/// [`duli_firmware::hash_reader`], that also hashes firmware payloads).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let (_, digest) = duli_firmware::hash_reader(&mut f)?;
    Ok(hex::encode(digest))
}

/// Writes `model.toml` for a tiny one-label sigmoid network `net.xml` named `name` with
/// file hash `sha` into `dir`, and loads it: the manifest fixture of the unit tests.
#[cfg(test)]
pub(crate) fn tiny_manifest(dir: &Path, name: &str, sha: &str) -> Manifest {
    let text = format!(
        r#"name = "{name}"
version = "1"
[file]
path = "net.xml"
sha256 = "{sha}"
[input]
name = "x"
layout = "NCHW"
width = 4
height = 4
channels = 1
resize = "bilinear"
normalise = {{ kind = "range", min = 0.0, max = 1.0 }}
[output]
activation = "sigmoid"
[[labels]]
code = "A"
name = "A"
"#
    );
    let path = dir.join("model.toml");
    std::fs::write(&path, text).unwrap();
    Manifest::load(&path).unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOT_MANIFESTS: &[&str] = &[
        "../models/pneumonia-xception/model.toml",
        "../models/densenet121-res224-all/model.toml",
    ];

    #[test]
    fn shipped_manifests_parse() {
        let base = Path::new(env!("CARGO_MANIFEST_DIR"));
        let m = Manifest::load(&base.join(ROOT_MANIFESTS[0])).unwrap();
        assert_eq!(m.labels.len(), 2);
        assert!(m.labels[0].background);
        assert_eq!(m.threshold(1), 0.5);
        assert_eq!(m.input_len(), 150 * 150 * 3);
        // The pediatric model declares the population its training data covered.
        assert_eq!(m.intended_use.age_min_years, Some(1.0));
        assert_eq!(m.intended_use.age_max_years, Some(5.0));
        assert_eq!(m.intended_use.modalities, ["CR", "DX"]);
        // The DenseNet manifest ships without weights, so without a checksum: it parses
        // as TOML but is refused until its conversion records the checksum.
        let text = std::fs::read_to_string(base.join(ROOT_MANIFESTS[1])).unwrap();
        let raw: toml::Table = text.parse().unwrap();
        let labels = raw["labels"].as_array().unwrap();
        assert_eq!(labels.len(), 18);
        // 14 labels carry a standard concept, each in a scheme PS3.16 lists.
        let schemes: Vec<&str> = labels
            .iter()
            .filter_map(|l| l.get("standard"))
            .map(|c| c["scheme"].as_str().unwrap())
            .collect();
        assert_eq!(schemes.len(), 14);
        assert!(schemes.iter().all(|s| ["SCT", "DCM"].contains(s)));
        match Manifest::load(&base.join(ROOT_MANIFESTS[1])) {
            Err(ManifestError::Invalid { key, .. }) => assert_eq!(key, "file.sha256"),
            other => panic!("expected a refusal for the missing checksum, got {other:?}"),
        }
    }

    #[test]
    fn checksum_mismatch_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("net.onnx"), b"not the weights").unwrap();
        let good = sha256_file(&dir.path().join("net.onnx")).unwrap();
        let manifest = |sha: &str| {
            format!(
                r#"name = "t"
version = "1"
[file]
path = "net.onnx"
sha256 = "{sha}"
[input]
name = "x"
layout = "NCHW"
width = 4
height = 4
channels = 1
resize = "bilinear"
normalise = {{ kind = "range", min = -1024.0, max = 1024.0 }}
[output]
activation = "sigmoid"
[[labels]]
code = "A"
name = "A"
"#
            )
        };
        let path = dir.path().join("model.toml");
        std::fs::write(&path, manifest(&good)).unwrap();
        let m = Manifest::load(&path).unwrap();
        assert_eq!(m.verify_files().unwrap(), good);
        std::fs::write(&path, manifest(&"0".repeat(64))).unwrap();
        let m = Manifest::load(&path).unwrap();
        let err = m.verify_files().unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }));
        assert!(err.to_string().contains("refusing to load"));
    }

    #[test]
    fn bad_values_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.toml");
        std::fs::write(
            &path,
            r#"name = "t"
version = "1"
[file]
path = "x.onnx"
sha256 = "00"
[input]
name = "x"
layout = "NCHW"
width = 4
height = 4
channels = 2
resize = "bilinear"
normalise = { kind = "range", min = 0.0, max = 1.0 }
[output]
activation = "none"
[[labels]]
code = "A"
name = "A"
"#,
        )
        .unwrap();
        match Manifest::load(&path) {
            Err(ManifestError::Invalid { key, .. }) => assert_eq!(key, "input.channels"),
            other => panic!("{other:?}"),
        }
    }

    /// Thresholds outside [0, 1] or not finite, and empty or repeated label codes, are
    /// refused with the key named.
    #[test]
    fn bad_thresholds_and_label_codes_name_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("model.toml");
        let manifest = |top: &str, labels: &str| {
            format!(
                r#"name = "t"
version = "1"
{top}
[file]
path = "x.onnx"
sha256 = "{}"
[input]
name = "x"
layout = "NCHW"
width = 4
height = 4
channels = 1
resize = "bilinear"
normalise = {{ kind = "range", min = 0.0, max = 1.0 }}
[output]
activation = "sigmoid"
{labels}"#,
                "0".repeat(64)
            )
        };
        let label = |code: &str, extra: &str| {
            format!("[[labels]]\ncode = \"{code}\"\nname = \"{code}\"\n{extra}\n")
        };
        let cases = [
            (
                "default_threshold = 1.5",
                label("A", ""),
                "default_threshold",
            ),
            (
                "default_threshold = nan",
                label("A", ""),
                "default_threshold",
            ),
            (
                "default_threshold = -0.1",
                label("A", ""),
                "default_threshold",
            ),
            ("", label("A", "threshold = 2.0"), "labels[0].threshold"),
            ("", label("A", "threshold = inf"), "labels[0].threshold"),
            (
                "",
                label("A", "") + &label("B", "threshold = nan"),
                "labels[1].threshold",
            ),
            ("", label("", ""), "labels[0].code"),
            ("", label("A", "") + &label(" ", ""), "labels[1].code"),
            ("", label("A", "") + &label("A", ""), "labels[1].code"),
            ("", label("A_B", "") + &label("a-b", ""), "labels[1].name"),
            // Codes and names that would not fit a DICOM Code Value / Code Meaning.
            (
                "",
                label("ENLARGED_CARDIOMEDIASTINUM", ""),
                "labels[0].code",
            ),
            (
                "",
                "[[labels]]\ncode = 'A\\B'\nname = 'A'\n".into(),
                "labels[0].code",
            ),
            (
                "",
                "[[labels]]\ncode = 'A'\nname = \"x\\u0007\"\n".into(),
                "labels[0].name",
            ),
            (
                "coding_scheme = \"99DULI\\\\X\"",
                label("A", ""),
                "coding_scheme",
            ),
        ];
        for (top, labels, key) in cases {
            std::fs::write(&path, manifest(top, &labels)).unwrap();
            match Manifest::load(&path) {
                Err(e @ ManifestError::Invalid { .. }) => {
                    let ManifestError::Invalid { key: got, .. } = &e else {
                        unreachable!()
                    };
                    assert_eq!(got, key, "{top} {labels}: {e}");
                    assert!(e.to_string().contains(key), "{e}");
                }
                other => panic!("{top} {labels}: {other:?}"),
            }
        }
        std::fs::write(
            &path,
            manifest(
                "default_threshold = 1.0",
                &(label("A", "threshold = 0.0") + &label("B", "")),
            ),
        )
        .unwrap();
        Manifest::load(&path).unwrap();
        // A model name or version longer than an LO (the results' Manufacturer's Model
        // Name), or with a backslash, is refused.
        for (from, to) in [
            ("name = \"t\"", format!("name = \"{}\"", "n".repeat(65))),
            ("version = \"1\"", "version = '1\\2'".to_string()),
        ] {
            let text = manifest("", &label("A", "")).replacen(from, &to, 1);
            assert_ne!(text, manifest("", &label("A", "")));
            std::fs::write(&path, text).unwrap();
            match Manifest::load(&path) {
                Err(ManifestError::Invalid { key, .. }) => assert_eq!(key, "name"),
                other => panic!("{to}: {other:?}"),
            }
        }
    }
}
