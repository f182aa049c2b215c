#!/usr/bin/env python3
"""Generate realistic synthetic DX instances for the ingest benchmark.

Each instance is a Digital X-Ray Image Storage - For Presentation object in
explicit VR little endian: 16 bits allocated, 12 stored, 2800 x 1800 pixels by
default (about 10 MB), with proper 2.25 UIDs, two images (PA and lateral) per
study (or --per-study N). Patients are 3 years old, inside the shipped model's intended
age range (1-5 years); --outside-every K makes every K-th study an adult of 46, which the
appliance records as not applicable. The pixel data is a smooth anatomy-like field plus per-pixel
noise, so it is not trivially compressible (as with a real detector).

    gen_dx.py OUT_DIR COUNT [--rows N] [--cols N] [--seed N] [--per-study N]
              [--outside-every K]

Reuses OUT_DIR when it already holds the same set (same count and geometry).
"""

import argparse
import datetime
import json
import os
import sys
import uuid

import numpy as np
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

DX_FOR_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.1"


def uid() -> str:
    """A 2.25 UID from a random UUID (PS3.5 B.2)."""
    return "2.25.%d" % uuid.uuid4().int


def base_image(rng, rows, cols):
    """A smooth chest-like field in 0..4095: bright mediastinum, dark lungs."""
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    x = np.linspace(-1.0, 1.0, cols, dtype=np.float32)[None, :]
    body = np.exp(-((x / 0.95) ** 8) - ((y / 1.05) ** 8))
    lungs = np.exp(-(((np.abs(x) - 0.42) / 0.26) ** 2) - ((y + 0.05) / 0.55) ** 2)
    spine = np.exp(-((x / 0.09) ** 2))
    # Low-frequency texture: coarse random grid, upsampled by repetition and smoothed.
    coarse = rng.standard_normal((rows // 50 + 2, cols // 50 + 2)).astype(np.float32)
    texture = np.kron(coarse, np.ones((50, 50), dtype=np.float32))[:rows, :cols]
    for axis in (0, 1):
        texture = (np.roll(texture, 25, axis) + texture + np.roll(texture, -25, axis)) / 3
    field = 300 + 2600 * body - 1500 * lungs * body + 900 * spine * body + 120 * texture
    return np.clip(field, 0, 4095).astype(np.float32)


def instance(base, rng, index, study, rows, cols, now):
    noise = rng.normal(0.0, 40.0, size=base.shape).astype(np.float32)
    pixels = np.clip(base + noise, 0, 4095).astype("<u2")

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_FOR_PRESENTATION
    sop_instance = uid()
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

    ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.ImageType = ["ORIGINAL", "PRIMARY"]
    ds.SOPClassUID = DX_FOR_PRESENTATION
    ds.SOPInstanceUID = sop_instance
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.AccessionNumber = "BENCH%05d" % study["number"]
    ds.Modality = "DX"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Manufacturer = "Synthetic"
    ds.InstitutionName = "Benchmark Hospital"
    ds.ReferringPhysicianName = ""
    ds.StudyDescription = "CHEST 2 VIEWS"
    # The first image of a study is the PA view (which the model analyses), a second the
    # lateral: one-image studies are all PA, inside the model's intended use.
    frontal = (index % study["size"]) % 2 == 0
    ds.SeriesDescription = "PA" if frontal else "LAT"
    ds.PatientName = "Bench^Patient%05d" % study["number"]
    ds.PatientID = "BP%05d" % study["number"]
    # Inside the shipped model's intended age range (1-5 years), except the studies that
    # --outside-every marks: adults, recorded as not applicable.
    years = 46 if study.get("outside") else 3
    ds.PatientBirthDate = "%04d0101" % (now.year - years)
    ds.PatientSex = "O"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "PA" if frontal else "LL"
    ds.KVP = "120"
    ds.StudyInstanceUID = study["study_uid"]
    ds.SeriesInstanceUID = study["series_uid"]
    ds.StudyID = str(study["number"])
    ds.SeriesNumber = 1
    ds.InstanceNumber = index % study["size"] + 1
    ds.PatientOrientation = ["L", "F"]
    ds.BurnedInAnnotation = "NO"
    ds.LossyImageCompression = "00"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = cols
    ds.ImagerPixelSpacing = [0.15, 0.15]
    ds.PixelSpacing = [0.15, 0.15]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = 0
    ds.RescaleSlope = 1
    ds.RescaleType = "US"
    ds.WindowCenter = 2048
    ds.WindowWidth = 4096
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    return ds


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("count", type=int)
    parser.add_argument("--rows", type=int, default=2800)
    parser.add_argument("--cols", type=int, default=1800)
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--per-study", type=int, default=2)
    parser.add_argument("--outside-every", type=int, default=0)
    args = parser.parse_args()

    os.makedirs(args.out_dir, exist_ok=True)
    stamp_path = os.path.join(args.out_dir, "set.json")
    stamp = {"count": args.count, "rows": args.rows, "cols": args.cols, "seed": args.seed}
    if args.per_study != 2:
        stamp["per_study"] = args.per_study
    # Sets made before ages were written are made again.
    stamp["ages"] = {"inside": 3, "outside_every": args.outside_every}
    # Sets whose views alternated by file rather than within each study are made again.
    stamp["views"] = "pa-first-in-study"
    files = sorted(f for f in os.listdir(args.out_dir) if f.endswith(".dcm"))
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp and len(files) == args.count:
                print("gen_dx: reusing %d instances in %s" % (args.count, args.out_dir))
                return
    except (OSError, ValueError):
        pass
    for f in files:
        os.remove(os.path.join(args.out_dir, f))

    rng = np.random.default_rng(args.seed)
    bases = [base_image(rng, args.rows, args.cols) for _ in range(4)]
    now = datetime.datetime.now()
    total = 0
    study = None
    for i in range(args.count):
        if i % args.per_study == 0:
            number = i // args.per_study + 1
            study = {"number": number, "study_uid": uid(),
                     "series_uid": uid(), "size": args.per_study,
                     "outside": args.outside_every > 0
                     and (number - 1) % args.outside_every == 0}
        ds = instance(bases[i % len(bases)], rng, i, study, args.rows, args.cols, now)
        path = os.path.join(args.out_dir, "dx%05d.dcm" % i)
        ds.save_as(path, enforce_file_format=True)
        total += os.path.getsize(path)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    print(
        "gen_dx: wrote %d instances, %.1f MB (%.2f MB each) to %s"
        % (args.count, total / 1e6, total / 1e6 / max(args.count, 1), args.out_dir)
    )


if __name__ == "__main__":
    sys.exit(main())
