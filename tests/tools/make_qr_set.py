"""Writes a small, varied set of instances for the Query/Retrieve tests.

usage: make_qr_set.py OUT_DIR

Three studies of three patients (one name in UTF-8), with DX, CR, a Comprehensive SR
(modality SR) and a Secondary Capture (modality OT) in their own series of the first study.
Prints one JSON object per file with the attributes the tests check answers against.
"""
import json
import os
import sys
import uuid

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
SR = "1.2.840.10008.5.1.4.1.1.88.33"


def uid():
    return "2.25." + str(uuid.uuid4().int)


STUDIES = [
    dict(PatientName="Doe^John", PatientID="P001", PatientBirthDate="19700101",
         PatientSex="M", AccessionNumber="ACC001", StudyDate="20240115",
         StudyTime="101500", StudyDescription="CHEST PA", ReferringPhysicianName="Ref^Doc",
         StudyID="S1"),
    dict(PatientName="Dorian^Gray", PatientID="P002", PatientBirthDate="19800202",
         PatientSex="M", AccessionNumber="ACC002", StudyDate="20240620",
         StudyTime="143000", StudyDescription="CHEST AP", ReferringPhysicianName="",
         StudyID="S2"),
    dict(PatientName="Müller^Jörg", PatientID="P003", PatientBirthDate="19900303",
         PatientSex="O", AccessionNumber="ACC003", StudyDate="20250101",
         StudyTime="080000", StudyDescription="THORAX", ReferringPhysicianName="",
         StudyID="S3"),
]

# (study index, SOP class, modality, series number, series description, instances)
SERIES = [
    (0, DX, "DX", 1, "PA view", 2),
    (0, SR, "SR", 900, "AI findings", 1),
    (0, SC, "OT", 901, "AI heatmap", 1),
    (1, CR, "CR", 1, "AP view", 1),
    (2, DX, "DX", 1, "PA view", 1),
]


def image(ds, rng, rows=32, cols=32, rgb=False):
    ds.Rows = rows
    ds.Columns = cols
    if rgb:
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "RGB"
        ds.PlanarConfiguration = 0
        ds.BitsAllocated = 8
        ds.BitsStored = 8
        ds.HighBit = 7
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 256, size=(rows, cols, 3), dtype=np.uint8).tobytes()
    else:
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.PixelData = rng.integers(0, 4096, size=(rows, cols), dtype=np.uint16).tobytes()


def sr_content(ds):
    ds.ValueType = "CONTAINER"
    ds.ContinuityOfContent = "SEPARATE"
    code = Dataset()
    code.CodeValue = "18748-4"
    code.CodingSchemeDesignator = "LN"
    code.CodeMeaning = "Diagnostic Imaging Report"
    ds.ConceptNameCodeSequence = Sequence([code])
    ds.CompletionFlag = "PARTIAL"
    ds.VerificationFlag = "UNVERIFIED"
    item = Dataset()
    item.RelationshipType = "CONTAINS"
    item.ValueType = "TEXT"
    name = Dataset()
    name.CodeValue = "121071"
    name.CodingSchemeDesignator = "DCM"
    name.CodeMeaning = "Finding"
    item.ConceptNameCodeSequence = Sequence([name])
    item.TextValue = "Pneumonia probability 0.91 (preliminary, AI-generated)"
    ds.ContentSequence = Sequence([item])


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    study_uids = [uid() for _ in STUDIES]
    n = 0
    for (si, cls, modality, number, desc, count) in SERIES:
        series_uid = uid()
        for k in range(count):
            st = STUDIES[si]
            sop = uid()
            meta = FileMetaDataset()
            meta.MediaStorageSOPClassUID = cls
            meta.MediaStorageSOPInstanceUID = sop
            meta.TransferSyntaxUID = ExplicitVRLittleEndian
            ds = Dataset()
            ds.file_meta = meta
            ds.SpecificCharacterSet = "ISO_IR 192"
            ds.SOPClassUID = cls
            ds.SOPInstanceUID = sop
            ds.StudyInstanceUID = study_uids[si]
            ds.SeriesInstanceUID = series_uid
            for key, value in st.items():
                setattr(ds, key, value)
            ds.Modality = modality
            ds.SeriesNumber = number
            ds.SeriesDescription = desc
            ds.InstanceNumber = k + 1
            if cls == SR:
                sr_content(ds)
                ds.ContentDate = st["StudyDate"]
                ds.ContentTime = "120000"
            else:
                ds.BodyPartExamined = "CHEST"
                image(ds, rng, rgb=(cls == SC))
                if cls == DX:
                    ds.PresentationIntentType = "FOR PRESENTATION"
                    ds.ViewPosition = "PA"
                if cls == SC:
                    ds.ConversionType = "WSD"
            path = os.path.join(out, f"qr{n:03d}.dcm")
            ds.save_as(path, enforce_file_format=True)
            n += 1
            rec = dict(path=path, sop=sop, sop_class=cls, study=study_uids[si],
                       series=series_uid, modality=modality, series_number=number,
                       series_description=desc, instance_number=k + 1, **st)
            print(json.dumps(rec, ensure_ascii=False))


if __name__ == "__main__":
    main()
