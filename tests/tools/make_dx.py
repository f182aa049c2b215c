"""Writes small synthetic DX instances for the test suite.

usage: make_dx.py OUT_DIR --count N [--studies S] [--rows R] [--cols C]
                  [--name "Family^Given"] [--charset "ISO_IR 100"] [--seed K]
                  [--prefix X] [--description TEXT] [--age AS|none]
                  [--outside-every K]

Each file is a DX For Presentation image (16 bits allocated, 12 stored, Explicit VR
Little Endian) with fresh 2.25 UIDs; instances are spread over S studies. Prints one line
per file: path, SOP Instance UID, Study Instance UID. Patient IDs are XP0000, XP0001...
and accession numbers XACC00000... for --prefix X (none by default).

Patients are inside the shipped model's intended age range (1-5 years): born 2023-01-01,
studied 2026-11-23 (3 years). --age writes Patient's Age as given (e.g. 045Y) instead, and
--age none leaves out both the age and the birth date (an unknown age). --outside-every K
makes every K-th study (the first included) an adult of 45 years, outside the range.
"""
import argparse
import os
import uuid

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def uid():
    return "2.25." + str(uuid.uuid4().int)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--studies", type=int, default=1)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--cols", type=int, default=64)
    p.add_argument("--name", default="Test^Patient")
    p.add_argument("--charset", default="")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--prefix", default="")
    p.add_argument("--description", default="")
    p.add_argument("--age", default="")
    p.add_argument("--outside-every", type=int, default=0)
    a = p.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    studies = [(uid(), f"{a.prefix}P{i:04d}", f"{a.prefix}ACC{i:05d}")
               for i in range(a.studies)]
    series = {s[0]: uid() for s in studies}
    for n in range(a.count):
        study_uid, pid, acc = studies[n % a.studies]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = DX
        sop = uid()
        meta.MediaStorageSOPInstanceUID = sop
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        if a.charset:
            ds.SpecificCharacterSet = a.charset
        ds.SOPClassUID = DX
        ds.SOPInstanceUID = sop
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series[study_uid]
        ds.PatientName = a.name
        ds.PatientID = pid
        outside = a.outside_every > 0 and (n % a.studies) % a.outside_every == 0
        if outside:
            ds.PatientBirthDate = "19810101"
            ds.PatientAge = "045Y"
        elif a.age != "none":
            ds.PatientBirthDate = "20230101"
            if a.age:
                ds.PatientAge = a.age
        ds.PatientSex = "F"
        ds.AccessionNumber = acc
        ds.StudyDate = "20261123"
        ds.StudyTime = "101500"
        ds.StudyID = "1"
        if a.description:
            ds.StudyDescription = a.description
        ds.Modality = "DX"
        ds.SeriesNumber = 1
        ds.InstanceNumber = n // a.studies + 1
        ds.BodyPartExamined = "CHEST"
        ds.ViewPosition = "PA"
        ds.PresentationIntentType = "FOR PRESENTATION"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = a.rows
        ds.Columns = a.cols
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        px = rng.integers(0, 4096, size=(a.rows, a.cols), dtype=np.uint16)
        ds.PixelData = px.tobytes()
        path = os.path.join(a.out, f"img{n:05d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        print(path, sop, study_uid)


if __name__ == "__main__":
    main()
