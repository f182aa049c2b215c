//! Class-activation heatmaps (Grad-CAM), exact for a pooled dense head, computed in the
//! same inference pass as the result.
//!
//! A manifest with `[heatmap] method = "cam"` names the last convolutional block of its
//! network (`features`, a layer of the IR). At load:
//!
//! - [`features_output`] adds the block's output as an extra network output (a `Result`
//!   layer and its edge, in the XML handed to the runtime: the files on disk are not
//!   changed), and
//! - [`CamHead::read`] walks the graph from that block through the head — global average
//!   pooling, then one or more dense layers (`MatMul` + bias `Add`, `ReLU` between them),
//!   then `SoftMax`, `Sigmoid` or nothing — and reads the head's weights from the weights
//!   file.
//!
//! With the block's activations `A` (K channels of H × W) of one image, [`CamHead::cam`]
//! computes Grad-CAM for the explained finding exactly: the gradient of the finding's
//! probability with respect to the pooled features, back through the dense layers with
//! their ReLU masks and the output activation's derivative, divided by H × W, gives one
//! weight per channel; the map is `ReLU(Σ_k w_k A_k)`, scaled to [0, 1]. The head's
//! probabilities recomputed from `A` ([`CamHead::probabilities`]) must match the network's
//! for every image (`infer::heatmap::cam_png`, within `HEAD_TOLERANCE`): a map whose head
//! is not what the walk found is refused, not shown as an explanation.
//!
//! At bf16 and INT8 the network compiled is another IR (the INT8 one carries quantize steps
//! in its head): [`features_output`] adds the same features output to it without reading
//! its head, and the maps use the head read from the f32 network.

use super::manifest::{HeatmapMethod, Manifest};
use roxmltree::{Document, Node};
use std::collections::HashMap;

/// Why a network's class-activation map cannot be prepared.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CamError {
    /// The IR is not XML the walk can read.
    #[error("model IR: {0}")]
    Ir(String),
    /// The head is not global pooling followed by dense layers.
    #[error("the network's head is not one class-activation maps support: {0}")]
    Head(String),
    /// The network files cannot be read.
    #[error("cannot read the network: {0}")]
    Read(String),
}

/// The class-activation graph of `manifest`'s network with the weights it reads;
/// `Ok(None)` when the manifest's heatmaps are not `cam`.
pub fn for_manifest(manifest: &Manifest) -> Result<Option<CamHead>, CamError> {
    let Some(n) = cam_network(manifest)? else {
        return Ok(None);
    };
    // Only the head's constants are read from the weights file, not the whole of it.
    let weights: Box<dyn WeightSource> = match manifest.weights_path() {
        Some(p) => Box::new(
            std::fs::File::open(&p).map_err(|e| CamError::Read(format!("{}: {e}", p.display())))?,
        ),
        None => Box::new(Vec::new()),
    };
    CamHead::read(&n.xml, weights.as_ref(), n.features).map(Some)
}

/// Where the head's constants are read from: the weights in memory, or the weights file
/// (read at the constants' offsets only).
pub trait WeightSource {
    /// `size` bytes at `offset`, or `None` when they lie outside the weights.
    fn bytes(&self, offset: u64, size: usize) -> Option<Vec<u8>>;
}

impl WeightSource for Vec<u8> {
    fn bytes(&self, offset: u64, size: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        self.get(start..start.checked_add(size)?)
            .map(<[u8]>::to_vec)
    }
}

impl WeightSource for std::fs::File {
    fn bytes(&self, offset: u64, size: usize) -> Option<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let len = self.metadata().ok()?.len();
        if offset.checked_add(size as u64)? > len {
            return None;
        }
        let mut out = vec![0u8; size];
        self.read_exact_at(&mut out, offset).ok()?;
        Some(out)
    }
}

/// The features layer, IR and weights of a `cam` manifest's network; `Ok(None)` when its
/// heatmaps are not `cam`.
fn cam_network(manifest: &Manifest) -> Result<Option<CamNetwork<'_>>, CamError> {
    if manifest.heatmap.method != HeatmapMethod::Cam {
        return Ok(None);
    }
    let Some(features) = manifest.heatmap.features.as_deref() else {
        return Ok(None);
    };
    let path = manifest.model_path();
    let xml = std::fs::read_to_string(&path)
        .map_err(|e| CamError::Read(format!("{}: {e}", path.display())))?;
    Ok(Some(CamNetwork { features, xml }))
}

/// What [`cam_network`] reads.
struct CamNetwork<'a> {
    features: &'a str,
    xml: String,
}

/// A network's IR with its features output added ([`features_output`]); its weights stay
/// in the network's weights file, which the runtime maps.
#[derive(Debug, Clone)]
pub struct FeaturesOutput {
    /// The IR XML with the extra output.
    pub xml: String,
    /// Name of the features tensor.
    pub tensor: String,
}

/// Output activation of the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadActivation {
    /// Softmax over the outputs.
    Softmax,
    /// One sigmoid per output.
    Sigmoid,
    /// Raw outputs.
    None,
}

/// One dense layer: `out = W · in + b`, `W` row-major `outputs × inputs`.
#[derive(Debug, Clone, PartialEq)]
pub struct Dense {
    /// Weights, `outputs × inputs`.
    pub weights: Vec<f32>,
    /// Bias, `outputs`.
    pub bias: Vec<f32>,
    /// Inputs.
    pub inputs: usize,
    /// Outputs.
    pub outputs: usize,
}

/// The head after the pooled features: dense layers with ReLU between them.
#[derive(Debug, Clone, PartialEq)]
pub struct CamHead {
    /// The dense layers, in order.
    pub layers: Vec<Dense>,
    /// The output activation.
    pub activation: HeadActivation,
    /// Channels, height and width of the features (channel-first).
    pub shape: (usize, usize, usize),
    /// The features are laid out channel-last (H × W × K) rather than K × H × W.
    pub channels_last: bool,
}

struct Layer<'a> {
    id: String,
    name: String,
    kind: String,
    node: Node<'a, 'a>,
}

struct Graph<'a> {
    layers: HashMap<String, Layer<'a>>,
    /// (from layer, from port) → [(to layer, to port)]
    edges: Vec<(String, String, String, String)>,
}

impl<'a> Graph<'a> {
    fn parse(doc: &'a Document<'a>) -> Result<Graph<'a>, CamError> {
        let root = doc.root_element();
        let mut layers = HashMap::new();
        let section = |name: &str| root.children().find(|n| n.has_tag_name(name));
        for node in section("layers")
            .ok_or_else(|| CamError::Ir("no <layers>".into()))?
            .children()
            .filter(|n| n.has_tag_name("layer"))
        {
            let attr = |a: &str| node.attribute(a).unwrap_or_default().to_string();
            layers.insert(
                attr("id"),
                Layer {
                    id: attr("id"),
                    name: attr("name"),
                    kind: attr("type"),
                    node,
                },
            );
        }
        let edges = section("edges")
            .ok_or_else(|| CamError::Ir("no <edges>".into()))?
            .children()
            .filter(|n| n.has_tag_name("edge"))
            .map(|e| {
                let a = |k: &str| e.attribute(k).unwrap_or_default().to_string();
                (a("from-layer"), a("from-port"), a("to-layer"), a("to-port"))
            })
            .collect();
        Ok(Graph { layers, edges })
    }

    fn layer(&self, id: &str) -> Result<&Layer<'a>, CamError> {
        self.layers
            .get(id)
            .ok_or_else(|| CamError::Ir(format!("edge to unknown layer {id}")))
    }

    /// The layers fed by any output of `id`.
    fn consumers(&self, id: &str) -> Vec<&Layer<'a>> {
        self.edges
            .iter()
            .filter(|e| e.0 == id)
            .filter_map(|e| self.layers.get(&e.2))
            .collect()
    }

    /// The layer feeding input port `port` of `id`.
    fn producer(&self, id: &str, port: &str) -> Result<&Layer<'a>, CamError> {
        let e = self
            .edges
            .iter()
            .find(|e| e.2 == id && e.3 == port)
            .ok_or_else(|| CamError::Ir(format!("layer {id} port {port} has no input")))?;
        self.layer(&e.0)
    }

    /// The layer named `name`, its output dims and its tensor name.
    fn features_layer(&self, name: &str) -> Result<(&Layer<'a>, Vec<usize>, String), CamError> {
        let f = self
            .layers
            .values()
            .find(|l| l.name == name)
            .ok_or_else(|| CamError::Head(format!("no layer named {name:?}")))?;
        let (dims, tensor) = out_dims(f);
        let tensor = tensor.ok_or_else(|| CamError::Ir(format!("{name} has no tensor name")))?;
        Ok((f, dims, tensor))
    }

    /// The one consumer of `id`, skipping shape-only layers.
    fn next(&self, id: &str) -> Result<&Layer<'a>, CamError> {
        let mut current = id.to_string();
        loop {
            let c = self.consumers(&current);
            let [one] = c.as_slice() else {
                return Err(CamError::Head(format!(
                    "layer {} feeds {} layers, not one",
                    self.layer(&current)?.name,
                    c.len()
                )));
            };
            if matches!(one.kind.as_str(), "Squeeze" | "Reshape" | "Unsqueeze") {
                current = one.id.clone();
                continue;
            }
            return Ok(one);
        }
    }

    /// The constant feeding input `port` of `id` (through a decompression `Convert`).
    fn constant(
        &self,
        id: &str,
        port: &str,
        bin: &dyn WeightSource,
    ) -> Result<(Vec<f32>, Vec<usize>), CamError> {
        let mut l = self.producer(id, port)?;
        if l.kind == "Convert" {
            l = self.producer(&l.id, "0")?;
        }
        if l.kind != "Const" {
            return Err(CamError::Head(format!(
                "{} takes {} ({}), not a constant",
                self.layer(id)?.name,
                l.name,
                l.kind
            )));
        }
        let data = l
            .node
            .children()
            .find(|n| n.has_tag_name("data"))
            .ok_or_else(|| CamError::Ir(format!("constant {} has no data", l.name)))?;
        let num = |k: &str| -> Result<usize, CamError> {
            data.attribute(k)
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| CamError::Ir(format!("constant {}: bad {k}", l.name)))
        };
        let (offset, size) = (num("offset")?, num("size")?);
        let shape: Vec<usize> = data
            .attribute("shape")
            .unwrap_or_default()
            .split(',')
            .filter_map(|d| d.trim().parse().ok())
            .collect();
        let bytes = bin
            .bytes(offset as u64, size)
            .ok_or_else(|| CamError::Ir(format!("constant {} lies outside the weights", l.name)))?;
        let values: Vec<f32> = match data.attribute("element_type") {
            Some("f16") => bytes
                .chunks_exact(2)
                .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
                .collect(),
            Some("f32") => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            other => {
                return Err(CamError::Head(format!(
                    "constant {} of type {other:?}",
                    l.name
                )))
            }
        };
        if values.len() != shape.iter().product::<usize>() {
            return Err(CamError::Ir(format!(
                "constant {}: size and shape disagree",
                l.name
            )));
        }
        Ok((values, shape))
    }
}

/// The IR of the network of `manifest` with its `[heatmap] features` layer added as an
/// extra output, the features tensor's name and the weights it reads; `Ok(None)` when the
/// manifest's heatmaps are not `cam`. Unlike [`for_manifest`] the head is not read: this
/// is what the runtime compiles for a network at another precision (the INT8 IR, whose
/// head carries quantize steps), while the head's weights come from the f32 network.
pub fn features_output(manifest: &Manifest) -> Result<Option<FeaturesOutput>, CamError> {
    let Some(n) = cam_network(manifest)? else {
        return Ok(None);
    };
    ir_with_features(&n.xml, n.features).map(Some)
}

/// The IR `xml` with the output of layer `features` added as an extra network output.
pub fn ir_with_features(xml: &str, features: &str) -> Result<FeaturesOutput, CamError> {
    let doc = Document::parse(xml).map_err(|e| CamError::Ir(e.to_string()))?;
    let g = Graph::parse(&doc)?;
    let (f, dims, tensor) = g.features_layer(features)?;
    let xml = with_output(xml, &g, &f.id, &dims)?;
    Ok(FeaturesOutput { xml, tensor })
}

/// An IEEE half-precision value as f32.
pub fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let frac = u32::from(h & 0x3ff);
    let bits = match (exp, frac) {
        (0, 0) => sign,
        (0, f) => {
            // subnormal: renormalise
            let mut e = 127 - 15 + 1;
            let mut f = f;
            while f & 0x400 == 0 {
                f <<= 1;
                e -= 1;
            }
            sign | ((e as u32) << 23) | ((f & 0x3ff) << 13)
        }
        (0x1f, f) => sign | 0x7f80_0000 | (f << 13),
        (e, f) => sign | ((e + 127 - 15) << 23) | (f << 13),
    };
    f32::from_bits(bits)
}

/// Output dims of a layer's first output port.
fn out_dims(l: &Layer) -> (Vec<usize>, Option<String>) {
    let port = l
        .node
        .children()
        .find(|n| n.has_tag_name("output"))
        .and_then(|o| o.children().find(|n| n.has_tag_name("port")));
    let dims = port
        .map(|p| {
            p.children()
                .filter(|n| n.has_tag_name("dim"))
                .filter_map(|d| d.text()?.trim().parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let names = port
        .and_then(|p| p.attribute("names"))
        .and_then(|n| n.split(',').next())
        .map(|n| n.trim().to_string());
    (dims, names)
}

fn attr_true(l: &Layer, key: &str) -> bool {
    l.node
        .children()
        .find(|n| n.has_tag_name("data"))
        .and_then(|d| d.attribute(key))
        .is_some_and(|v| v == "true")
}

impl CamHead {
    /// Reads the head after layer `features` (its last convolutional block) in the IR
    /// `xml`, its constants from `bin`.
    pub fn read(xml: &str, bin: &dyn WeightSource, features: &str) -> Result<CamHead, CamError> {
        let doc = Document::parse(xml).map_err(|e| CamError::Ir(e.to_string()))?;
        let g = Graph::parse(&doc)?;
        let (f, dims, _) = g.features_layer(features)?;
        let pool = g.next(&f.id)?;
        if pool.kind != "ReduceMean" {
            return Err(CamError::Head(format!(
                "{features} feeds {} ({}), not global average pooling",
                pool.name, pool.kind
            )));
        }
        let mut layers = Vec::new();
        let mut at = g.next(&pool.id)?;
        let activation = loop {
            match at.kind.as_str() {
                "MatMul" => {
                    let (w, shape) = g.constant(&at.id, "1", bin)?;
                    let [a, b] = shape.as_slice() else {
                        return Err(CamError::Head(format!("{}: weights are not 2-D", at.name)));
                    };
                    // Row-major outputs × inputs.
                    let (outputs, inputs, weights) = if attr_true(at, "transpose_b") {
                        (*a, *b, w)
                    } else {
                        let mut t = vec![0f32; w.len()];
                        for i in 0..*a {
                            for o in 0..*b {
                                t[o * a + i] = w[i * b + o];
                            }
                        }
                        (*b, *a, t)
                    };
                    let add = g.next(&at.id)?;
                    if add.kind != "Add" {
                        return Err(CamError::Head(format!("{} has no bias", at.name)));
                    }
                    let (bias, _) = g.constant(&add.id, "1", bin)?;
                    if bias.len() != outputs {
                        return Err(CamError::Head(format!("{}: bias size", add.name)));
                    }
                    layers.push(Dense {
                        weights,
                        bias,
                        inputs,
                        outputs,
                    });
                    let after = g.consumers(&add.id);
                    match after.as_slice() {
                        [one] if one.kind == "Relu" || one.kind == "ReLU" => {
                            at = g.next(&one.id)?
                        }
                        [one] if one.kind == "SoftMax" => break HeadActivation::Softmax,
                        [one] if one.kind == "Sigmoid" => break HeadActivation::Sigmoid,
                        [one] if one.kind == "Result" => break HeadActivation::None,
                        _ => {
                            return Err(CamError::Head(format!(
                                "{} is followed by an unsupported layer",
                                add.name
                            )))
                        }
                    }
                }
                other => {
                    return Err(CamError::Head(format!(
                        "{} ({other}) in the head is not a dense layer",
                        at.name
                    )))
                }
            }
        };
        let k = layers.first().map(|l| l.inputs).unwrap_or(0);
        for pair in layers.windows(2) {
            if pair[0].outputs != pair[1].inputs {
                return Err(CamError::Head("dense layer sizes do not chain".into()));
            }
        }
        let (shape, channels_last) = match dims.as_slice() {
            [1, c, h, w] if *c == k => ((*c, *h, *w), false),
            [1, h, w, c] if *c == k => ((*c, *h, *w), true),
            _ => {
                return Err(CamError::Head(format!(
                    "{features} has shape {dims:?}, not 1 × {k} channels × H × W"
                )))
            }
        };
        Ok(CamHead {
            layers,
            activation,
            shape,
            channels_last,
        })
    }
}

/// `xml` with a `Result` layer fed by the first output port of layer `id`.
fn with_output(xml: &str, g: &Graph, id: &str, dims: &[usize]) -> Result<String, CamError> {
    let next_id = g
        .layers
        .keys()
        .filter_map(|k| k.parse::<u64>().ok())
        .max()
        .unwrap_or(0)
        + 1;
    let port = g
        .layers
        .get(id)
        .and_then(|l| l.node.children().find(|n| n.has_tag_name("output")))
        .and_then(|o| o.children().find(|n| n.has_tag_name("port")))
        .and_then(|p| p.attribute("id"))
        .ok_or_else(|| CamError::Ir("features layer has no output port".into()))?;
    let dims: String = dims.iter().map(|d| format!("<dim>{d}</dim>")).collect();
    let layer = format!(
        "<layer id=\"{next_id}\" name=\"duli_cam_features\" type=\"Result\" version=\"opset1\">\
         <input><port id=\"0\" precision=\"FP32\">{dims}</port></input></layer>\n"
    );
    let edge = format!(
        "<edge from-layer=\"{id}\" from-port=\"{port}\" to-layer=\"{next_id}\" to-port=\"0\" />\n"
    );
    let (Some(l), Some(e)) = (xml.rfind("</layers>"), xml.rfind("</edges>")) else {
        return Err(CamError::Ir("no </layers> or </edges>".into()));
    };
    if l > e {
        return Err(CamError::Ir("</edges> before </layers>".into()));
    }
    let mut out = String::with_capacity(xml.len() + layer.len() + edge.len());
    out.push_str(&xml[..l]);
    out.push_str(&layer);
    out.push_str(&xml[l..e]);
    out.push_str(&edge);
    out.push_str(&xml[e..]);
    Ok(out)
}

impl CamHead {
    /// Where channel `c` at (y, x) is in the features.
    fn index(&self, c: usize, y: usize, x: usize) -> usize {
        let (k, h, w) = self.shape;
        if self.channels_last {
            (y * w + x) * k + c
        } else {
            (c * h + y) * w + x
        }
    }

    /// Values of channel `c` at (y, x).
    fn at(&self, features: &[f32], c: usize, y: usize, x: usize) -> f32 {
        features.get(self.index(c, y, x)).copied().unwrap_or(0.0)
    }

    /// The pooled features (global average).
    fn pooled(&self, features: &[f32]) -> Vec<f32> {
        let (k, h, w) = self.shape;
        let n = (h * w).max(1) as f32;
        (0..k)
            .map(|c| {
                let mut s = 0f32;
                for y in 0..h {
                    for x in 0..w {
                        s += self.at(features, c, y, x);
                    }
                }
                s / n
            })
            .collect()
    }

    /// Runs the dense layers; returns every layer's pre-activation.
    fn forward(&self, pooled: &[f32]) -> Vec<Vec<f32>> {
        let mut pre = Vec::with_capacity(self.layers.len());
        let mut input = pooled.to_vec();
        for (i, l) in self.layers.iter().enumerate() {
            let out: Vec<f32> = (0..l.outputs)
                .map(|o| {
                    let row = &l.weights[o * l.inputs..(o + 1) * l.inputs];
                    row.iter().zip(&input).map(|(w, v)| w * v).sum::<f32>() + l.bias[o]
                })
                .collect();
            input = if i + 1 < self.layers.len() {
                out.iter().map(|v| v.max(0.0)).collect()
            } else {
                out.clone()
            };
            pre.push(out);
        }
        pre
    }

    fn activate(&self, logits: &[f32]) -> Vec<f32> {
        match self.activation {
            HeadActivation::Softmax => {
                let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let e: Vec<f32> = logits.iter().map(|v| (v - m).exp()).collect();
                let s: f32 = e.iter().sum();
                e.iter().map(|v| v / s).collect()
            }
            HeadActivation::Sigmoid => logits.iter().map(|v| 1.0 / (1.0 + (-v).exp())).collect(),
            HeadActivation::None => logits.to_vec(),
        }
    }

    /// The head's outputs recomputed from the features (to check against the network's).
    pub fn probabilities(&self, features: &[f32]) -> Vec<f32> {
        let pre = self.forward(&self.pooled(features));
        self.activate(pre.last().map(Vec::as_slice).unwrap_or(&[]))
    }

    /// The Grad-CAM map (H × W, row-major, in [0, 1]) of output `target` for one image's
    /// features: all zeros when nothing in the image raises that output.
    pub fn cam(&self, features: &[f32], target: usize) -> Vec<f32> {
        let (k, h, w) = self.shape;
        let Some(weights) = self.channel_weights(features, target) else {
            return vec![0.0; h * w];
        };
        let mut map = vec![0f32; h * w];
        for y in 0..h {
            for x in 0..w {
                let s: f32 = (0..k)
                    .map(|c| weights[c] * self.at(features, c, y, x))
                    .sum();
                map[y * w + x] = s.max(0.0);
            }
        }
        let max = map.iter().copied().fold(0f32, f32::max);
        if max > 0.0 {
            map.iter_mut().for_each(|v| *v /= max);
        }
        map
    }

    /// The Grad-CAM channel weights of output `target` for one image's features: the
    /// derivative of that output's probability with respect to each channel's activation
    /// at any one position (the gradient with respect to the pooled features divided by
    /// H × W). `None` when the head has no layers.
    pub fn channel_weights(&self, features: &[f32], target: usize) -> Option<Vec<f32>> {
        let (_, h, w) = self.shape;
        let pre = self.forward(&self.pooled(features));
        let logits = pre.last()?;
        let p = self.activate(logits);
        // d output[target] / d logits
        let mut grad: Vec<f32> = match self.activation {
            HeadActivation::Softmax => (0..logits.len())
                .map(|j| {
                    let pt = p.get(target).copied().unwrap_or(0.0);
                    pt * (if j == target { 1.0 } else { 0.0 } - p[j])
                })
                .collect(),
            HeadActivation::Sigmoid => (0..logits.len())
                .map(|j| {
                    if j == target {
                        p[j] * (1.0 - p[j])
                    } else {
                        0.0
                    }
                })
                .collect(),
            HeadActivation::None => (0..logits.len())
                .map(|j| if j == target { 1.0 } else { 0.0 })
                .collect(),
        };
        // Back through the dense layers (ReLU masks from the forward pass).
        for (i, l) in self.layers.iter().enumerate().rev() {
            let mut g_in = vec![0f32; l.inputs];
            for (o, g) in grad.iter().enumerate() {
                if *g == 0.0 {
                    continue;
                }
                let row = &l.weights[o * l.inputs..(o + 1) * l.inputs];
                for (gi, wv) in g_in.iter_mut().zip(row) {
                    *gi += g * wv;
                }
            }
            if i > 0 {
                for (gi, v) in g_in.iter_mut().zip(&pre[i - 1]) {
                    if *v <= 0.0 {
                        *gi = 0.0;
                    }
                }
            }
            grad = g_in;
        }
        // d pooled_k / d A_k(y, x) = 1 / (H W): the channel weights.
        let n = (h * w).max(1) as f32;
        Some(grad.iter().map(|g| g / n).collect())
    }
}

/// Channel `c`'s Grad-CAM weight for output `target` measured instead of derived: central
/// differences of the head's own forward pass, every position of the channel moved by
/// ±`delta` (so the derivative at one position is the change over 2 · delta · H · W).
#[cfg(test)]
pub(crate) fn numeric_channel_weight(
    head: &CamHead,
    features: &[f32],
    target: usize,
    c: usize,
    delta: f32,
) -> f32 {
    let (_, h, w) = head.shape;
    let moved = |by: f32| {
        let mut f = features.to_vec();
        for y in 0..h {
            for x in 0..w {
                f[head.index(c, y, x)] += by;
            }
        }
        head.probabilities(&f)[target]
    };
    (moved(delta) - moved(-delta)) / (2.0 * delta * (h * w) as f32)
}

/// Bilinear upsampling of a `w × h` map to `out_w × out_h` (pixel centres aligned).
pub fn upsample(map: &[f32], w: usize, h: usize, out_w: usize, out_h: usize) -> Vec<f32> {
    let at = |x: isize, y: isize| -> f32 {
        let x = x.clamp(0, w as isize - 1) as usize;
        let y = y.clamp(0, h as isize - 1) as usize;
        map.get(y * w + x).copied().unwrap_or(0.0)
    };
    let mut out = Vec::with_capacity(out_w * out_h);
    for oy in 0..out_h {
        let fy = (oy as f32 + 0.5) * h as f32 / out_h as f32 - 0.5;
        let (y0, ty) = (fy.floor() as isize, fy - fy.floor());
        for ox in 0..out_w {
            let fx = (ox as f32 + 0.5) * w as f32 / out_w as f32 - 0.5;
            let (x0, tx) = (fx.floor() as isize, fx - fx.floor());
            let top = at(x0, y0) * (1.0 - tx) + at(x0 + 1, y0) * tx;
            let bottom = at(x0, y0 + 1) * (1.0 - tx) + at(x0 + 1, y0 + 1) * tx;
            out.push(top * (1.0 - ty) + bottom * ty);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upsampling_interpolates_between_pixel_centres() {
        let up = upsample(&[0.0, 1.0], 2, 1, 4, 1);
        assert_eq!(up.len(), 4);
        assert_eq!((up[0], up[3]), (0.0, 1.0));
        assert!(up[1] < up[2]);
    }

    #[test]
    fn half_precision_values_convert_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0000), 0.0);
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert!(f16_to_f32(0x7e00).is_nan());
    }

    /// A tiny IR: features (1 × 2 × 2 × 2, NCHW) → mean → dense 2→2 (ReLU) → dense 2→2 →
    /// softmax, weights as f32 constants.
    fn tiny() -> (String, Vec<u8>) {
        let consts: [(&str, &[f32], &str); 4] = [
            ("w1", &[1.0, 0.0, 0.0, 1.0], "2, 2"),
            ("b1", &[0.0, 0.0], "1, 2"),
            ("w2", &[0.0, 0.0, 1.0, -1.0], "2, 2"),
            ("b2", &[0.0, 0.0], "1, 2"),
        ];
        let mut bin = Vec::new();
        let mut layers = String::new();
        for (i, (name, v, shape)) in consts.iter().enumerate() {
            let offset = bin.len();
            for x in *v {
                bin.extend_from_slice(&x.to_le_bytes());
            }
            layers.push_str(&format!(
                "<layer id=\"{}\" name=\"{name}\" type=\"Const\" version=\"opset1\"><data element_type=\"f32\" shape=\"{shape}\" offset=\"{offset}\" size=\"{}\" /><output><port id=\"0\" precision=\"FP32\"/></output></layer>",
                10 + i,
                v.len() * 4
            ));
        }
        let xml = format!(
            r#"<?xml version="1.0"?><net name="t" version="11"><layers>
<layer id="1" name="block" type="ReLU" version="opset1"><output><port id="1" precision="FP32" names="block:0"><dim>1</dim><dim>2</dim><dim>2</dim><dim>2</dim></port></output></layer>
<layer id="2" name="gap" type="ReduceMean" version="opset1"><output><port id="2"/></output></layer>
<layer id="3" name="sq" type="Squeeze" version="opset1"><output><port id="1"/></output></layer>
<layer id="4" name="mm1" type="MatMul" version="opset1"><data transpose_a="false" transpose_b="true" /><output><port id="2"/></output></layer>
<layer id="5" name="add1" type="Add" version="opset1"><output><port id="2"/></output></layer>
<layer id="6" name="relu" type="ReLU" version="opset1"><output><port id="1"/></output></layer>
<layer id="7" name="mm2" type="MatMul" version="opset1"><data transpose_a="false" transpose_b="true" /><output><port id="2"/></output></layer>
<layer id="8" name="add2" type="Add" version="opset1"><output><port id="2"/></output></layer>
<layer id="9" name="probs" type="SoftMax" version="opset8"><output><port id="1"/></output></layer>
{layers}
</layers><edges>
<edge from-layer="1" from-port="1" to-layer="2" to-port="0" />
<edge from-layer="2" from-port="2" to-layer="3" to-port="0" />
<edge from-layer="3" from-port="1" to-layer="4" to-port="0" />
<edge from-layer="10" from-port="0" to-layer="4" to-port="1" />
<edge from-layer="4" from-port="2" to-layer="5" to-port="0" />
<edge from-layer="11" from-port="0" to-layer="5" to-port="1" />
<edge from-layer="5" from-port="2" to-layer="6" to-port="0" />
<edge from-layer="6" from-port="1" to-layer="7" to-port="0" />
<edge from-layer="12" from-port="0" to-layer="7" to-port="1" />
<edge from-layer="7" from-port="2" to-layer="8" to-port="0" />
<edge from-layer="13" from-port="0" to-layer="8" to-port="1" />
<edge from-layer="8" from-port="2" to-layer="9" to-port="0" />
</edges></net>"#
        );
        (xml, bin)
    }

    /// The derived channel weights are the derivative of the probability: central
    /// differences of the head's forward pass agree, for both outputs, with both hidden
    /// units active and with one cut off by its ReLU (its channel's weight is then 0).
    #[test]
    fn channel_weights_are_the_derivative_of_the_probability() {
        let (xml, bin) = tiny();
        let head = CamHead::read(&xml, &bin, "block").unwrap();
        let both = [1.5, 0.5, 0.25, 1.0, 0.5, 0.75, 0.25, 0.5];
        let one = [1.5, 0.5, 0.25, 1.0, -0.5, -0.75, -0.25, -0.5];
        for (features, zero) in [(both, None), (one, Some(1))] {
            for target in 0..2 {
                let weights = head.channel_weights(&features, target).unwrap();
                for (c, w) in weights.iter().enumerate() {
                    let measured = numeric_channel_weight(&head, &features, target, c, 1e-2);
                    assert!(
                        (w - measured).abs() <= 1e-3 * w.abs().max(1e-2),
                        "output {target} channel {c}: derived {w}, measured {measured}"
                    );
                    if zero == Some(c) {
                        assert_eq!(*w, 0.0);
                    } else {
                        assert!(w.abs() > 1e-3, "output {target} channel {c}: {w}");
                    }
                }
            }
        }
    }

    #[test]
    fn the_walk_finds_the_head_and_adds_the_output() {
        let (xml, bin) = tiny();
        let head = CamHead::read(&xml, &bin, "block").unwrap();
        assert_eq!(head.layers.len(), 2);
        assert_eq!(head.activation, HeadActivation::Softmax);
        assert_eq!(head.shape, (2, 2, 2));
        let out = ir_with_features(&xml, "block").unwrap();
        assert_eq!(out.tensor, "block:0");
        assert!(out.xml.contains("name=\"duli_cam_features\""));
        assert!(out
            .xml
            .contains("<edge from-layer=\"1\" from-port=\"1\" to-layer=\"14\""));
        // The modified IR still parses.
        Document::parse(&out.xml).unwrap();
        assert!(matches!(
            CamHead::read(&xml, &bin, "nope"),
            Err(CamError::Head(_))
        ));
        // A weights file too short for the constants is refused, not read past.
        assert!(CamHead::read(&xml, &bin[..8].to_vec(), "block").is_err());
    }

    /// Output 1 is channel 0 minus channel 1 of the pooled features: its map lights where
    /// channel 0 is high; output 0 (the softmax's other side) the opposite.
    #[test]
    fn grad_cam_follows_the_channel_that_raises_the_output() {
        let (xml, bin) = tiny();
        let head = CamHead::read(&xml, &bin, "block").unwrap();
        // channel 0: hot at (0,0); channel 1: flat 0.1
        let features = [4.0, 0.0, 0.0, 0.0, 0.1, 0.1, 0.1, 0.1];
        let p = head.probabilities(&features);
        assert!((p[0] + p[1] - 1.0).abs() < 1e-6 && p[1] > p[0], "{p:?}");
        let map = head.cam(&features, 1);
        assert_eq!(map[0], 1.0);
        assert!(map[1..].iter().all(|v| *v == 0.0), "{map:?}");
        // Output 0 rises with channel 1 and falls with channel 0: its map is dark where
        // channel 0 is hot and even elsewhere.
        let map = head.cam(&features, 0);
        assert_eq!(map, vec![0.0, 1.0, 1.0, 1.0]);
    }
}
