#!/usr/bin/env python3
"""Writes the fuzz targets' seed corpora under fuzz/corpus/<target>/.

Every seed is synthetic (made here, no patient data): small DICOM objects in each
transfer syntax the daemon decodes, the PDUs and command sets of a real association,
HL7 ACKs as RIS systems send them, console request bodies, configuration and
provisioning files, a firmware bundle and endorsement signed with a throw-away key, and
model-pack archives.

Run from the repository root with the test environment's Python:
    .venv/bin/python fuzz/make_seeds.py
Needs pydicom and numpy (in .venv), DCMTK's dcmconv/dcmcrle/dcmcjpls/dcmcjpeg, and for the
JPEG 2000 seed the PyPI package pylibjpeg-openjpeg (skipped with a note when absent).
The firmware seeds need a built `duli` (target/debug/duli).
"""
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (ExplicitVRLittleEndian, ImplicitVRLittleEndian,
                         DeflatedExplicitVRLittleEndian, generate_uid)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")
UID_ROOT = "1.2.826.0.1.3680043.8.498."


def out(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def image(bits=16, photometric="MONOCHROME2", size=24):
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.SOPInstanceUID = UID_ROOT + "1.1"
    ds.StudyInstanceUID = UID_ROOT + "2.1"
    ds.SeriesInstanceUID = UID_ROOT + "3.1"
    ds.PatientName = "SEED^SYNTHETIC"
    ds.PatientID = "SEED0001"
    ds.PatientAge = "003Y"
    ds.PatientBirthDate = "20230101"
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.AccessionNumber = "ACC0001"
    ds.Modality = "DX"
    ds.BodyPartExamined = "CHEST"
    ds.ViewPosition = "AP"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows = size
    ds.Columns = size
    ds.BitsAllocated = bits
    ds.BitsStored = 12 if bits == 16 else 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.WindowCenter = 2048 if bits == 16 else 128
    ds.WindowWidth = 4096 if bits == 16 else 256
    y, x = np.mgrid[0:size, 0:size]
    top = (1 << ds.BitsStored) - 1
    arr = ((x + y) * top // (2 * size - 2)).astype(np.uint16 if bits == 16 else np.uint8)
    ds.PixelData = arr.tobytes()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    return ds


def part10(ds, ts=ExplicitVRLittleEndian):
    ds.file_meta.TransferSyntaxUID = ts
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True, implicit_vr=(ts == ImplicitVRLittleEndian),
               little_endian=True)
    return buf.getvalue()


def dicom_seeds(tmp):
    base = os.path.join(tmp, "explicit.dcm")
    with open(base, "wb") as f:
        f.write(part10(image()))
    files = {"explicit-le.dcm": base}
    for name, ds in [("8bit.dcm", image(bits=8)), ("monochrome1.dcm", image(photometric="MONOCHROME1"))]:
        p = os.path.join(tmp, name)
        with open(p, "wb") as f:
            f.write(part10(ds))
        files[name] = p
    p = os.path.join(tmp, "implicit.dcm")
    with open(p, "wb") as f:
        f.write(part10(image(), ImplicitVRLittleEndian))
    files["implicit-le.dcm"] = p
    for name, cmd, src in [("deflate.dcm", ["dcmconv", "+td"], base),
                           ("big-endian.dcm", ["dcmconv", "+tb"], base),
                           ("rle.dcm", ["dcmcrle"], base),
                           ("jpeg-ls-lossless.dcm", ["dcmcjpls", "+el"], base),
                           ("jpeg-ls-near-lossless.dcm", ["dcmcjpls", "+en"], base),
                           ("jpeg-lossless-sv1.dcm", ["dcmcjpeg", "+e1"], base),
                           ("jpeg-lossless.dcm", ["dcmcjpeg", "+el"], base),
                           ("jpeg-extended-12bit.dcm", ["dcmcjpeg", "+ee"], base),
                           ("jpeg-extended-8bit.dcm", ["dcmcjpeg", "+ee"], files["8bit.dcm"]),
                           ("jpeg-baseline.dcm", ["dcmcjpeg", "+eb"], files["8bit.dcm"])]:
        p = os.path.join(tmp, name)
        subprocess.run(cmd + [src, p], check=True)
        files[name] = p
    try:
        from pydicom.uid import JPEG2000Lossless
        ds = image(size=64)  # below 64 pixels the encoder's default levels do not fit
        ds.compress(JPEG2000Lossless)
        p = os.path.join(tmp, "j2k-lossless.dcm")
        ds.save_as(p, enforce_file_format=True)
        files["j2k-lossless.dcm"] = p
        from pydicom.uid import JPEG2000
        ds = image(size=64)
        ds.compress(JPEG2000, j2k_cr=[20])
        p = os.path.join(tmp, "j2k-lossy.dcm")
        ds.save_as(p, enforce_file_format=True)
        files["j2k-lossy.dcm"] = p
    except Exception as e:  # plugin missing
        print(f"note: no JPEG 2000 seed ({e})", file=sys.stderr)
    for name, path in files.items():
        data = open(path, "rb").read()
        out("pixels", name, data)
        out("store_header", name, data)
    ds = image()
    ds.SpecificCharacterSet = ["ISO 2022 IR 13", "ISO 2022 IR 87"]
    ds.PatientName = "ﾔﾏﾀﾞ^ﾀﾛｳ=山田^太郎=やまだ^たろう"
    out("store_header", "iso2022-jp.dcm", part10(ds))
    out("pixels", "upload.png", png_bytes())
    for name, data in jpeg_uploads():
        out("pixels", name, data)


def jpeg_uploads():
    """Uploaded JPEGs for the patched decoder (vendor/jpeg-decoder): grey progressive and
    4:2:0 colour, made by PIL (skipped with a note without it)."""
    try:
        from PIL import Image
    except ImportError as e:
        print(f"note: no JPEG upload seeds ({e})", file=sys.stderr)
        return []
    r = np.random.default_rng(3)
    seeds = []
    for name, pixels, options in [
            ("grey-progressive.jpg", (r.random((64, 48)) * 255).astype(np.uint8),
             {"quality": 85, "progressive": True}),
            ("colour-420.jpg", (r.random((33, 47, 3)) * 255).astype(np.uint8), {"quality": 80})]:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", **options)
        seeds.append((name, buf.getvalue()))
    return seeds


def jpeg_seeds():
    """Grey and colour JPEG files for the `jpeg` target (the patched decoder alone): the
    upload seeds, and baseline, optimised-table, restart-marker and quality-extreme
    encodings of a smooth image (blocks without AC terms) and of noise (every AC term)."""
    try:
        from PIL import Image
    except ImportError as e:
        print(f"note: no JPEG seeds ({e})", file=sys.stderr)
        return
    for name, data in jpeg_uploads():
        out("jpeg", name, data)
    y, x = np.mgrid[0:40, 0:56]
    smooth = ((x * 4 + y * 2) % 256).astype(np.uint8)
    noise = (np.random.default_rng(5).random((24, 32)) * 255).astype(np.uint8)
    for name, pixels, options in [
            ("smooth-baseline.jpg", smooth, {"quality": 90}),
            ("smooth-q100.jpg", smooth, {"quality": 100}),
            ("noise-q1.jpg", noise, {"quality": 1}),
            ("noise-optimised.jpg", noise, {"quality": 95, "optimize": True}),
            ("smooth-restarts.jpg", smooth, {"quality": 75, "restart_marker_blocks": 2}),
            ("colour-444.jpg", np.stack([smooth, 255 - smooth, smooth[::-1]], -1),
             {"quality": 85, "subsampling": 0})]:
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format="JPEG", **options)
        out("jpeg", name, buf.getvalue())


def png_bytes():
    import zlib
    w = h = 16
    raw = b"".join(b"\x00" + bytes((x * 16 + y) & 0xFF for x in range(w)) for y in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def implicit(ds):
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = True
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def encoded(ds, implicit_vr, little_endian):
    buf = pydicom.filebase.DicomBytesIO()
    buf.is_little_endian = little_endian
    buf.is_implicit_VR = implicit_vr
    pydicom.filewriter.write_dataset(buf, ds)
    return buf.getvalue()


def guard_parser_seeds():
    """Data sets for the pre-scan/parser agreement target: a selector byte (0 implicit VR
    little endian, 1 explicit little endian, 2 explicit big endian) and a bare data set with
    nested sequences, a context-dependent VR, a private sequence and encapsulated pixels."""
    ds = image(size=8)
    del ds.file_meta
    ds.SmallestImagePixelValue = 0
    content = Dataset()
    content.ValueType = "TEXT"
    content.TextValue = "SEED"
    inner = Dataset()
    inner.ValueType = "CONTAINER"
    inner.ContentSequence = [content]
    ds.ContentSequence = [inner, content]
    private = Dataset()
    private.add_new(0x00091010, "LO", "SEED")
    ds.add_new(0x00090010, "LO", "SEED")
    ds.add_new(0x00091001, "SQ", [private])
    for sel, (imp, le) in enumerate([(True, True), (False, True), (False, False)]):
        out("guard_parser", f"image-{sel}.bin", bytes([sel]) + encoded(ds, imp, le))
    # A UN of undefined length holding one item (explicit VR little endian).
    un = (struct.pack("<HH", 0x0009, 0x1002) + b"UN\0\0" + b"\xff" * 4
          + struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)
          + struct.pack("<HH", 0x0009, 0x1010) + b"LO" + struct.pack("<H", 4) + b"SEED"
          + struct.pack("<HHI", 0xFFFE, 0xE00D, 0) + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    out("guard_parser", "un-undefined-1.bin", bytes([1]) + un)
    # Encapsulated pixel data: an empty offset table and one fragment.
    pixels = (struct.pack("<HH", 0x7FE0, 0x0010) + b"OB\0\0" + b"\xff" * 4
              + struct.pack("<HHI", 0xFFFE, 0xE000, 0)
              + struct.pack("<HHI", 0xFFFE, 0xE000, 4) + b"\x01\x02\x03\x04"
              + struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    out("guard_parser", "encapsulated-1.bin", bytes([1]) + pixels)


def command(**kw):
    ds = Dataset()
    ds.set_original_encoding(True, True)
    for k, v in kw.items():
        setattr(ds, k, v)
    body = implicit(ds)
    g = Dataset()
    g.CommandGroupLength = len(body)
    g.set_original_encoding(True, True)
    return implicit(g) + body


def commands():
    return {
        "echo-rq": command(AffectedSOPClassUID="1.2.840.10008.1.1", CommandField=0x0030,
                           MessageID=1, CommandDataSetType=0x0101),
        "store-rq": command(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.1.1.1", CommandField=0x0001,
                            MessageID=2, Priority=0, CommandDataSetType=0x0000,
                            AffectedSOPInstanceUID=UID_ROOT + "1.1"),
        "find-rq": command(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.1", CommandField=0x0020,
                           MessageID=3, Priority=0, CommandDataSetType=0x0000),
        "move-rq": command(AffectedSOPClassUID="1.2.840.10008.5.1.4.1.2.2.2", CommandField=0x0021,
                           MessageID=4, Priority=0, CommandDataSetType=0x0000, MoveDestination="PACS"),
        "cancel-rq": command(CommandField=0x0FFF, MessageIDBeingRespondedTo=3, CommandDataSetType=0x0101),
    }


def identifier(level, **kw):
    ds = Dataset()
    ds.set_original_encoding(True, True)
    ds.QueryRetrieveLevel = level
    for k, v in kw.items():
        setattr(ds, k, v)
    return implicit(ds)


def item(t, body):
    return struct.pack(">BxH", t, len(body)) + body


def associate_rq(contexts, calling=b"SEEDSCU", called=b"DULI"):
    body = struct.pack(">H2x", 1) + called.ljust(16) + calling.ljust(16) + bytes(32)
    body += item(0x10, b"1.2.840.10008.3.1.1.1")
    for pc_id, abstract, tss in contexts:
        sub = item(0x30, abstract.encode()) + b"".join(item(0x40, ts.encode()) for ts in tss)
        body += item(0x20, struct.pack(">B3x", pc_id) + sub)
    user = item(0x51, struct.pack(">I", 16384)) + item(0x52, b"1.2.826.0.1.3680043.8.498.9") \
        + item(0x55, b"SEED_0_1")
    user += item(0x54, struct.pack(">H", 27) + b"1.2.840.10008.5.1.4.1.1.1.1" + b"\x01\x01")
    body += item(0x50, user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def pdata(pc_id, flags, data):
    pdv = struct.pack(">IBB", len(data) + 2, pc_id, flags) + data
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


def pdv(pc_id, command_, last, data):
    flags = (pc_id >> 1 << 2) | (2 if command_ else 0) | (1 if last else 0)
    return struct.pack(">BH", flags & 0xFF, len(data)) + data


def association_seeds():
    explicit, implicit_ts = ExplicitVRLittleEndian, ImplicitVRLittleEndian
    rq = associate_rq([(1, "1.2.840.10008.1.1", [implicit_ts]),
                       (3, "1.2.840.10008.5.1.4.1.1.1.1", [explicit, implicit_ts]),
                       (5, "1.2.840.10008.5.1.4.1.2.2.1", [implicit_ts])])
    cmds = commands()
    release = struct.pack(">BxI", 0x05, 4) + bytes(4)
    abort = struct.pack(">BxI", 0x07, 4) + bytes([0, 0, 2, 0])
    out("pdu", "associate-rq", rq)
    out("pdu", "echo", rq + pdata(1, 3, cmds["echo-rq"]) + release)
    ds = part10(image(size=8))
    body = ds[132 + 12 + struct.unpack("<I", ds[140:144])[0]:]  # data set after the meta group
    out("pdu", "store", rq + pdata(3, 3, cmds["store-rq"]) + pdata(3, 2, body) + release)
    out("pdu", "find", rq + pdata(5, 3, cmds["find-rq"])
        + pdata(5, 2, identifier("STUDY", PatientName="DOE*", StudyDate="20250101-",
                                 StudyInstanceUID="")) + abort)
    for name, c in cmds.items():
        out("dimse", name, c)
    out("dimse", "store-stream", pdv(3, True, True, cmds["store-rq"]) + pdv(3, False, False, body[:40])
        + pdv(3, False, True, body[40:]))
    out("dimse", "echo-in-two", pdv(1, True, False, cmds["echo-rq"][:20]) + pdv(1, True, True, cmds["echo-rq"][20:]))


def find_seeds():
    seeds = {
        "study-wildcard": identifier("STUDY", PatientName="DO?*^J*", StudyDate="20250101-20261231",
                                     StudyTime="080000-", ModalitiesInStudy="CR\\DX",
                                     StudyInstanceUID="", NumberOfStudyRelatedInstances=""),
        "patient": identifier("PATIENT", PatientID="SEED*", PatientBirthDate="-20240101",
                              SpecificCharacterSet="ISO_IR 100"),
        "series-list": identifier("SERIES", StudyInstanceUID=UID_ROOT + "2.1\\" + UID_ROOT + "2.2",
                                  SeriesInstanceUID="", Modality="DX"),
        "image": identifier("IMAGE", StudyInstanceUID=UID_ROOT + "2.1", SeriesInstanceUID=UID_ROOT + "3.1",
                            SOPInstanceUID="", InstanceNumber="1"),
    }
    # Names in ISO 2022 code extensions (PS3.5 Annexes H and I), escape sequences included.
    seeds["iso2022-jp"] = identifier("STUDY", SpecificCharacterSet=["", "ISO 2022 IR 87"],
                                     PatientName="Yamada^Tarou=山田^太郎=やまだ^たろう",
                                     StudyInstanceUID="")
    seeds["iso2022-kr"] = identifier("PATIENT", SpecificCharacterSet=["", "ISO 2022 IR 149"],
                                     PatientName="Hong^Gildong=洪^吉洞=홍^길동", PatientID="")
    for name, data in seeds.items():
        out("find_identifier", name, b"\x00" + data)


def commitment_seeds():
    """Storage Commitment reports (N-EVENT-REPORT event information) as archives send them."""
    sr = "1.2.840.10008.5.1.4.1.1.88.33"

    def refs(uids, reason=None):
        items = []
        for uid in uids:
            it = Dataset()
            it.ReferencedSOPClassUID = sr
            it.ReferencedSOPInstanceUID = uid
            if reason is not None:
                it.FailureReason = reason
            items.append(it)
        return items

    seeds = {}
    ok = Dataset()
    ok.TransactionUID = "2.25.1"
    ok.ReferencedSOPSequence = refs(["2.25.1"])
    seeds["committed"] = ok
    mixed = Dataset()
    mixed.TransactionUID = "2.25.2"
    mixed.ReferencedSOPSequence = refs(["2.25.1"])
    mixed.FailedSOPSequence = refs(["2.25.3", "2.25.4"], 0x0112)
    seeds["failures"] = mixed
    empty = Dataset()
    empty.TransactionUID = "2.25.3"
    seeds["transaction-only"] = empty
    for name, ds in seeds.items():
        out("commitment_report", name + "-implicit", b"\x00" + encoded(ds, True, True))
        out("commitment_report", name + "-explicit", b"\x01" + encoded(ds, False, True))


def hl7_seeds():
    acks = {
        "aa": "MSH|^~\\&|RIS|HOSP|DULI|EDGE|20260101120000||ACK^R01^ACK|A1|P|2.5.1\rMSA|AA|DULI0000000001\r",
        "ae-err": "MSH|^~\\&|RIS|HOSP|DULI|EDGE|20260101120000||ACK|A2|P|2.3\rMSA|AE|DULI0000000001|bad PID\rERR|^^^207&Application internal error&HL70357\r",
        "ca-lf": "MSH|^~\\&|RIS|HOSP|DULI|EDGE|20260101||ACK|A3|P|2.4\nMSA|CA|DULI0000000001\n",
        "odd-delims": "MSH#!@$%RIS#HOSP#DULI#EDGE#20260101##ACK#A4#P#2.5\rMSA#AR#DULI0000000001\r",
    }
    for name, text in acks.items():
        out("hl7_ack", name, b"\x0b" + text.encode() + b"\x1c\x0d")
    out("hl7_ack", "two-frames", b"\x0b" + acks["aa"].encode() + b"\x1c\x0d\x0b" + acks["ca-lf"].encode() + b"\x1c\x0d")


def console_seeds():
    bodies = {
        "login": {"username": "admin", "password": "correct horse battery"},
        "feedback": {"agree": False, "comment": "consolidation left lower lobe", "finding": "PNEUMONIA"},
        "user": {"role": "radiologist", "password": "another long passphrase", "disabled": False},
        "retry": {"ids": [1, 2, 3]},
        "setup": {"code": "123456", "username": "admin", "password": "a long first password"},
    }
    for name, body in bodies.items():
        out("console_json", name, json.dumps(body).encode())


def config_seeds():
    for src in ["config/duli.toml", "config/provision.example.toml",
                "daemon/tests/config/valid/modality-list.toml"]:
        out("config_toml", os.path.basename(src), open(os.path.join(ROOT, src), "rb").read())


def firmware_seeds(tmp):
    duli = os.path.join(ROOT, "target", "debug", "duli")
    if not os.path.exists(duli):
        print("note: no firmware seeds (build target/debug/duli first)", file=sys.stderr)
        return
    keys = os.path.join(tmp, "keys")
    os.makedirs(keys)

    def run(*a):
        subprocess.run([duli, "firmware", *a], check=True, capture_output=True, text=True)
    run("keygen", "--out-dir", keys, "--name", "root")
    payload = os.path.join(tmp, "payload.bin")
    with open(payload, "wb") as f:
        f.write(b"seed payload " * 8)
    for kind in ["model-pack", "rootfs"]:
        bundle = os.path.join(tmp, f"{kind}.duf")
        run("sign", "--key", os.path.join(keys, "root.pk8"), "--kind", kind, "--version", "1.2.0",
            "--min-version", "1.0.0", "--hardware", "nuc-x86_64", "--out", bundle, "--payload", payload)
        out("firmware_bundle", f"{kind}.duf", open(bundle, "rb").read())
    # The shape `duli` writes; the fuzz target's anchor is a fixed test key, so the
    # fuzzer explores parsing and every check before the signature.
    endorsement = {"format": 1, "key": "ab" * 32, "label": "hospital group model packs",
                   "endorser": "0707070707070707", "signature": "00" * 64}
    out("endorsement", "format1.json", json.dumps(endorsement, indent=2).encode())


def pack_tar(entries, fmt=None):
    """A tar archive of `entries`: (name, bytes) for files, (name, None) for folders,
    (name, "->target") for symbolic links, (name, "=>target") for hard links."""
    import tarfile
    buf = io.BytesIO()
    kw = {"format": fmt} if fmt is not None else {}
    with tarfile.open(fileobj=buf, mode="w", **kw) as tar:
        for name, body in entries:
            info = tarfile.TarInfo(name)
            info.mtime = 0
            if body is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif isinstance(body, str):
                info.type = tarfile.SYMTYPE if body.startswith("->") else tarfile.LNKTYPE
                info.linkname = body[2:]
                tar.addfile(info)
            else:
                info.size = len(body)
                tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def model_pack_seeds():
    """Model-pack archives as `duli firmware pack` makes them, and the shapes the daemon
    refuses: names outside the folder, links, a model.toml that names nothing."""
    import tarfile
    toml = b'name = "pneumonia-xception"\nversion = "1.0.0"\n'
    good = [("model.toml", toml), ("weights", None), ("weights/net.xml", b"<net/>"),
            ("weights/net.bin", b"\0" * 64)]
    out("model_pack", "pack.tar", pack_tar(good))
    out("model_pack", "pack-pax.tar", pack_tar(good, tarfile.PAX_FORMAT))
    out("model_pack", "pack-gnu-long-name.tar",
        pack_tar([("model.toml", toml), ("d/" + "n" * 150, b"x")], tarfile.GNU_FORMAT))
    out("model_pack", "dot-slash.tar", pack_tar([("./model.toml", toml)]))
    out("model_pack", "no-name.tar", pack_tar([("model.toml", b"version = 1\n")]))
    out("model_pack", "dotdot.tar", pack_tar([("model.toml", toml), ("../escape", b"x")]))
    out("model_pack", "absolute.tar", pack_tar([("/tmp/escape", b"x"), ("model.toml", toml)]))
    out("model_pack", "symlink.tar", pack_tar([("model.toml", toml), ("link", "->/etc")]))
    out("model_pack", "hardlink.tar", pack_tar([("model.toml", toml), ("link", "=>model.toml")]))


def model_manifest_seeds():
    """Model manifests: the shipped ones, and the shapes the daemon refuses or must bound
    (labels out of step, thresholds out of range, an intended use upside down, a grid that
    asks for millions of occluded copies, codes too long for DICOM)."""
    shipped = {}
    for m in ["pneumonia-xception", "densenet121-res224-all"]:
        text = open(os.path.join(ROOT, "models", m, "model.toml"), "rb").read()
        shipped[m] = text
        out("model_manifest", m + ".toml", text)
    base = shipped["pneumonia-xception"]
    variants = {
        "threshold-above-one": base.replace(b"threshold = 0.5", b"threshold = 1.5"),
        "threshold-nan": base.replace(b"threshold = 0.5", b"threshold = nan"),
        "huge-grid": base.replace(b"grid = 8", b"grid = 4294967295"),
        "zero-size": base.replace(b"width = 150", b"width = 0"),
        "huge-size": base.replace(b"width = 150", b"width = 9223372036854775807"),
        "ages-upside-down": base.replace(b"age_min_years = 1.0", b"age_min_years = 9.0"),
        "long-code": base.replace(b'code = "PNEUMONIA"', b'code = "' + b"P" * 200 + b'"'),
        "no-labels": base.split(b"[[labels]]")[0],
        "path-escape": base.replace(b'path = "pneumonia_xception_fp16.xml"', b'path = "../../etc/passwd"'),
        "unknown-key": base + b"\nsurprise = true\n",
    }
    for name, text in variants.items():
        out("model_manifest", name + ".toml", text)


def main():
    shutil.rmtree(CORPUS, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        dicom_seeds(tmp)
        guard_parser_seeds()
        association_seeds()
        find_seeds()
        commitment_seeds()
        hl7_seeds()
        console_seeds()
        config_seeds()
        firmware_seeds(tmp)
    model_pack_seeds()
    model_manifest_seeds()
    jpeg_seeds()
    for t in sorted(os.listdir(CORPUS)):
        print(f"{t}: {len(os.listdir(os.path.join(CORPUS, t)))} seeds")


if __name__ == "__main__":
    main()
