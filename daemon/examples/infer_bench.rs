//! Per-image timings of the inference pipeline: decode, preprocess, infer (median of
//! repeated runs) and one occlusion heatmap, for each file given. Also writes the last
//! input tensor as raw little-endian f32 to `$BENCH_TENSOR` (default
//! `/tmp/duli-bench-input.f32`) so plain OpenVINO can be timed on the same input.
//!
//! usage: infer_bench [--model MANIFEST] [--runs N] FILE...

use duli::config::InferenceConfig;
use duli::infer::analyse::{prepare_file, Preparation};
use duli::infer::heatmap::occlusion_map;
use duli::infer::Engine;
use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut cfg = InferenceConfig::default();
    let mut runs = 20usize;
    let mut files = Vec::new();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--model" => cfg.model = PathBuf::from(args.next().unwrap_or_default()),
            "--runs" => runs = args.next().unwrap_or_default().parse()?,
            _ => files.push(PathBuf::from(a)),
        }
    }
    let engine = Engine::new(&cfg)?;
    let m = engine.manifest().clone();
    let batch = m.heatmap.batch as usize;
    let mut bg = engine.background_request(batch)?;
    println!(
        "model {} {} on {} ({} infer requests), {runs} runs per image",
        m.name,
        m.version,
        engine.identity().backend,
        engine.workers()
    );
    println!(
        "{:<34} {:>9} {:>11} {:>9} {:>11}",
        "file", "decode_ms", "preproc_ms", "infer_ms", "heatmap_ms"
    );
    let mut last = Vec::new();
    let mut all_infer = Vec::new();
    for f in &files {
        let Preparation::Ready(p) = prepare_file(f, &m, duli::config::DEFAULT_MAX_PIXELS) else {
            println!("{:<34} not analysed", f.display());
            continue;
        };
        engine.infer_blocking(p.tensor.clone())?; // warm-up
        let mut t = Vec::with_capacity(runs);
        for _ in 0..runs {
            let s = Instant::now();
            engine.infer_blocking(p.tensor.clone())?;
            t.push(s.elapsed().as_secs_f64() * 1000.0);
        }
        let infer = median(t);
        all_infer.push(infer);
        let s = Instant::now();
        occlusion_map(bg.as_mut(), &m, &p.tensor, m.labels.len() - 1, batch, || {})?;
        let heat = s.elapsed().as_secs_f64() * 1000.0;
        // Folder/name, so encodings of the same image are told apart.
        let name = f
            .iter()
            .rev()
            .take(2)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<PathBuf>()
            .display()
            .to_string();
        println!(
            "{:<34} {:>9.1} {:>11.1} {:>9.2} {:>11.0}",
            name, p.timings.decode_ms, p.timings.preprocess_ms, infer, heat
        );
        last = p.tensor;
    }
    if !all_infer.is_empty() {
        println!("median infer_ms over files: {:.2}", median(all_infer));
    }
    let out = std::env::var("BENCH_TENSOR").unwrap_or_else(|_| "/tmp/duli-bench-input.f32".into());
    let bytes: Vec<u8> = last.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(&out, bytes)?;
    Ok(())
}
