//! The pipeline against the shipped IR's reference outputs (`reference.csv`), from the PNGs
//! and from every DICOM encoding of the samples.

use super::analyse::{prepare_file, Preparation};
use super::findings::probabilities;
use super::testdata::{reference, runtime_config, samples_dir};
use super::Engine;
use std::path::Path;

fn probs(engine: &Engine, path: &Path) -> Vec<f32> {
    let Preparation::Ready(p) = prepare_file(path, engine.manifest()) else {
        panic!("{} was not prepared", path.display());
    };
    let raw = engine.infer_blocking(p.tensor).unwrap();
    probabilities(&raw, engine.manifest().output.activation)
}

#[test]
fn golden_probabilities_from_png_and_dicom_match_the_reference() {
    let (Some(dir), Some(cfg)) = (samples_dir(), runtime_config()) else {
        return;
    };
    let engine = Engine::new(&cfg).unwrap();
    let mut worst = 0f32;
    let rows = reference(&dir);
    assert_eq!(rows.len(), 16);
    for (file, normal, pneumonia) in &rows {
        let stem = file.trim_end_matches(".png");
        for path in [
            dir.join("png").join(file),
            dir.join("dicom/explicit-le").join(format!("{stem}.dcm")),
        ] {
            let p = probs(&engine, &path);
            let d = (p[0] - normal).abs().max((p[1] - pneumonia).abs());
            worst = worst.max(d);
            assert!(
                d <= 1e-3,
                "{}: got {:?}, reference [{normal}, {pneumonia}]",
                path.display(),
                p
            );
        }
    }
    eprintln!("golden: 32 inputs, max |Δp| vs reference.csv ir_fp16 = {worst:.2e}");
}

#[test]
fn every_encoding_gives_the_explicit_le_probabilities() {
    let (Some(dir), Some(cfg)) = (samples_dir(), runtime_config()) else {
        return;
    };
    let engine = Engine::new(&cfg).unwrap();
    let mut variants = 0;
    for name in ["NORMAL_02", "PNEUMONIA_01"] {
        let base = probs(&engine, &dir.join(format!("dicom/explicit-le/{name}.dcm")));
        for v in std::fs::read_dir(dir.join("dicom")).unwrap() {
            let v = v.unwrap().path();
            let f = v.join(format!("{name}.dcm"));
            if !v.is_dir() || !f.exists() || v.ends_with("explicit-le") {
                continue;
            }
            let p = probs(&engine, &f);
            assert_eq!(p, base, "{} differs from explicit-le", f.display());
            variants += 1;
        }
    }
    assert_eq!(variants, 16);
}
