//! The demo's sample studies: where they are found (see [`crate::locate::demo_samples`]),
//! and how sample images (PNG/JPEG, such as the 16 chest X-rays `make models` prepares from
//! the model's PyPI package) become DICOM DX studies as an X-ray room would send them.
//!
//! A wrapped image gets a fictitious but realistic header: one patient and one study per
//! image, names from a fixed list, a Patient ID, birth date (ages one to five, the
//! population the shipped model was trained on), an accession number, and UIDs under
//! `dicom.uid_root` derived from the image's SHA-256, so running the demo twice sends the
//! same studies again rather than new ones.

use crate::console::upload::{decode_image, wrap_gray, WrapHeader};
use crate::results::uids::derive;
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

/// DX Image Storage — For Presentation.
const DX_FOR_PRESENTATION: &str = "1.2.840.10008.5.1.4.1.1.1.1";

const FAMILY: &[&str] = &[
    "SILVA",
    "SANTOS",
    "OLIVEIRA",
    "SOUZA",
    "RODRIGUES",
    "FERREIRA",
    "ALVES",
    "PEREIRA",
    "LIMA",
    "GOMES",
    "COSTA",
    "RIBEIRO",
    "MARTINS",
    "CARVALHO",
    "ALMEIDA",
    "LOPES",
];
const GIVEN: &[&str] = &[
    "LUCAS",
    "JULIA",
    "MATEUS",
    "SOFIA",
    "GABRIEL",
    "ALICE",
    "RAFAEL",
    "LAURA",
    "DAVI",
    "HELENA",
    "PEDRO",
    "VALENTINA",
    "MIGUEL",
    "BEATRIZ",
    "ARTHUR",
    "MARIANA",
];

/// The sample folder to use and where it came from.
#[derive(Debug, Clone)]
pub struct SampleSource {
    /// The folder.
    pub dir: PathBuf,
    /// `--samples`, `DULI_SHARED_DIR`, ... (for the first line the demo prints).
    pub origin: &'static str,
}

/// The folder given with `--samples`, else the first found of
/// [`crate::locate::demo_samples`]; an error names every place looked at and the fix.
pub fn find(explicit: Option<PathBuf>) -> Result<SampleSource> {
    if let Some(dir) = explicit {
        if !dir.is_dir() {
            bail!("sample folder {} (--samples) not found", dir.display());
        }
        return Ok(SampleSource {
            dir,
            origin: "--samples",
        });
    }
    let found =
        crate::locate::demo_samples(std::env::var_os(crate::locate::SHARED_ENV).map(Into::into));
    first_folder(&found)
}

/// The first folder among the places `found` names, or the error naming every place and
/// the fix.
fn first_folder(found: &crate::locate::Found) -> Result<SampleSource> {
    match found.tried.iter().find(|(p, _)| p.is_dir()) {
        Some((dir, origin)) => Ok(SampleSource {
            dir: dir.clone(),
            origin,
        }),
        None => bail!(
            "no sample studies found; looked in:\n{}\nrun `make models` (it prepares the 16 sample chest X-rays from the model's PyPI package), or pass --samples FOLDER",
            found.describe()
        ),
    }
}

fn is_image(path: &Path) -> bool {
    matches!(
        path.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

/// The DICOM files to send from `dir`: DICOM files as they are, PNG/JPEG images wrapped as
/// DX files into `out` (kept between runs: an image already wrapped is not wrapped again).
pub fn dicom_files(
    dir: &Path,
    out: &Path,
    uid_root: &str,
    max_pixels: u64,
) -> Result<Vec<PathBuf>> {
    let mut files = crate::scu::collect_files(&[dir.to_path_buf()]);
    files.sort();
    let mut result = Vec::new();
    for f in files {
        if !is_image(&f) {
            result.push(f);
            continue;
        }
        let bytes = std::fs::read(&f).with_context(|| format!("read {}", f.display()))?;
        let header = header_for(&bytes, uid_root);
        let dest = out.join(format!("{}.dcm", header.instance_uid));
        if !dest.is_file() {
            let (gray, _) = decode_image(&bytes, max_pixels)
                .with_context(|| format!("sample image {}", f.display()))?;
            let obj = wrap_gray(gray, &header)
                .with_context(|| format!("wrap sample image {}", f.display()))?;
            std::fs::create_dir_all(out).with_context(|| format!("create {}", out.display()))?;
            let tmp = dest.with_extension("partial");
            obj.write_to_file(&tmp)
                .with_context(|| format!("write {}", tmp.display()))?;
            std::fs::rename(&tmp, &dest)
                .with_context(|| format!("rename to {}", dest.display()))?;
        }
        result.push(dest);
    }
    Ok(result)
}

/// The header of a wrapped sample image, derived from its bytes alone.
pub fn header_for(bytes: &[u8], uid_root: &str) -> WrapHeader {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let d = digest.as_ref();
    let n = |i: usize| usize::from(d[i]);
    let seed = hex::encode(&d[..16]);
    // Between 366 days and 5 years (less a day) old today, so inside the shipped model's
    // intended 1–5 y on the study date.
    let age_days = 366 + (n(2) * 256 + n(8)) as i64 % (4 * 365);
    let birth = time::OffsetDateTime::now_utc().date() - time::Duration::days(age_days);
    let sex = if n(3) % 2 == 0 { "M" } else { "F" };
    WrapHeader {
        sop_class: DX_FOR_PRESENTATION,
        patient_name: format!(
            "{}^{}",
            FAMILY[n(0) % FAMILY.len()],
            GIVEN[n(1) % GIVEN.len()]
        ),
        patient_id: format!(
            "{:08}",
            u32::from_be_bytes([d[4], d[5], d[6], d[7]]) % 100_000_000
        ),
        birth_date: crate::clock::dicom_date(birth),
        sex: sex.into(),
        study_uid: derive(uid_root, &format!("demo-sample/{seed}/study")),
        series_uid: derive(uid_root, &format!("demo-sample/{seed}/series")),
        instance_uid: derive(uid_root, &format!("demo-sample/{seed}/instance")),
        accession: format!(
            "D{:09}",
            u32::from_be_bytes([d[10], d[11], d[12], d[13]]) % 1_000_000_000
        ),
        study_id: "1".into(),
        study_description: "XR CHEST AP".into(),
        series_description: "CHEST AP".into(),
        image_type: "DERIVED\\PRIMARY",
        view_position: "AP",
        derivation: None,
        institution: Some("DULI DEMO HOSPITAL".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::dicom_image::DicomImage;

    /// With no sample folder anywhere (a public clone before `make models`), the error
    /// names every place looked at, with where each came from, and the command that fixes
    /// it; a file where a folder should be does not count; the first folder found wins.
    #[test]
    fn without_samples_anywhere_the_error_names_each_place_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared/cxr");
        let prepared = dir.path().join("checkout/.cache/samples/cxr-jpeg");
        std::fs::create_dir_all(prepared.parent().unwrap()).unwrap();
        std::fs::write(&prepared, b"a file, not a folder").unwrap();
        let found = crate::locate::Found {
            path: None,
            tried: vec![
                (shared.clone(), "DULI_SHARED_DIR"),
                (prepared.clone(), "prepared by `make models`"),
            ],
        };
        let e = first_folder(&found).unwrap_err().to_string();
        assert!(e.starts_with("no sample studies found; looked in:"), "{e}");
        for (place, origin) in &found.tried {
            assert!(e.contains(&place.display().to_string()), "{e}");
            assert!(e.contains(origin), "{e}");
        }
        assert!(
            e.contains("run `make models`") && e.contains("--samples FOLDER"),
            "{e}"
        );

        std::fs::remove_file(&prepared).unwrap();
        std::fs::create_dir_all(&prepared).unwrap();
        let s = first_folder(&found).unwrap();
        assert_eq!((s.dir, s.origin), (prepared, "prepared by `make models`"));
    }
    use crate::infer::eligibility::{check, Eligibility};

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img =
            image::GrayImage::from_fn(w, h, |x, y| image::Luma([((x * 7 + y * 3) % 256) as u8]));
        let mut out = Vec::new();
        image::DynamicImage::ImageLuma8(img)
            .write_to(
                &mut std::io::Cursor::new(&mut out),
                image::ImageFormat::Jpeg,
            )
            .unwrap();
        out
    }

    #[test]
    fn a_sample_jpeg_becomes_an_eligible_dx_study_with_stable_identifiers() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(src.join("a.jpeg"), jpeg(64, 48)).unwrap();
        std::fs::write(src.join("b.jpg"), jpeg(50, 40)).unwrap();
        let out = dir.path().join("out");
        let files = dicom_files(&src, &out, "1.2.3.", 100_000_000).unwrap();
        assert_eq!(files.len(), 2);
        let again = dicom_files(&src, &out, "1.2.3.", 100_000_000).unwrap();
        assert_eq!(files, again, "the same images give the same UIDs");
        let img = DicomImage::open(&files[0]).unwrap();
        let h = img.header();
        assert_eq!(h.sop_class_uid, DX_FOR_PRESENTATION);
        assert_eq!(h.modality, "DX");
        assert_eq!(check(h), Eligibility::Eligible);
        let obj = dicom_object::open_file(&files[0]).unwrap();
        let name = obj
            .element(dicom_dictionary_std::tags::PATIENT_NAME)
            .unwrap()
            .to_str()
            .unwrap()
            .to_string();
        assert!(name.contains('^') && !name.starts_with("UPLOAD"), "{name}");
        let a = header_for(&jpeg(64, 48), "1.2.3.");
        let b = header_for(&jpeg(50, 40), "1.2.3.");
        assert_ne!(a.study_uid, b.study_uid);
        assert_ne!(a.patient_id, b.patient_id);
        assert!(a.study_uid.starts_with("1.2.3."));
    }

    #[test]
    fn every_sample_patient_is_inside_the_shipped_models_age_range() {
        let d = time::OffsetDateTime::now_utc().date();
        let today = crate::clock::dicom_date(d);
        for i in 0u32..500 {
            let h = header_for(&i.to_le_bytes(), "1.2.3.");
            let age = crate::infer::age::patient_age("", &h.birth_date, &today)
                .completed()
                .unwrap();
            assert!(
                age.within(Some(1.0), Some(5.0)),
                "{} is {}",
                h.birth_date,
                age.describe()
            );
        }
    }

    #[test]
    fn a_missing_sample_folder_is_named() {
        let err = find(Some(PathBuf::from("/nowhere/samples"))).unwrap_err();
        assert!(err.to_string().contains("/nowhere/samples"), "{err}");
    }
}
