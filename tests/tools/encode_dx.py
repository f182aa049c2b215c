"""Writes one synthetic DX image in each compressed transfer syntax the daemon decodes.

usage: encode_dx.py OUT_DIR

For the hostile-input suite on a machine without the shared sample set: a 256 x 256 DX
For Presentation image (16 bits allocated, 12 stored, a smooth gradient with noise, a
patient inside the shipped model's intended age range) made with make_dx.py, then
encoded with DCMTK (JPEG lossless SV1: dcmcjpeg +e1; JPEG-LS lossless: dcmcjpls +el; RLE:
dcmcrle) and with OpenJPEG through Pillow (JPEG 2000 lossless, reversible 5/3 wavelet),
into OUT_DIR/dicom/<encoding>/dx.dcm, the layout of the shared sample set. Each file has
its own study. Prints the files written.
"""
import io
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.encaps import encapsulate
from pydicom.uid import JPEG2000Lossless, generate_uid

HERE = os.path.dirname(os.path.abspath(__file__))


def base(path):
    """A fresh explicit-LE DX at `path`, with pixels a codec has something to do with."""
    out = os.path.dirname(path)
    subprocess.run(
        [sys.executable, os.path.join(HERE, "make_dx.py"), out, "--count", "1",
         "--rows", "256", "--cols", "256"],
        check=True, stdout=subprocess.PIPE)
    made = [f for f in os.listdir(out) if f.endswith(".dcm")]
    os.rename(os.path.join(out, made[0]), path)
    ds = dcmread(path)
    y, x = np.mgrid[0:256, 0:256]
    rng = np.random.default_rng(7)
    pixels = (x * 8 + y * 4 + rng.integers(0, 64, (256, 256))) % 4096
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(path)
    return ds


def j2k(src, dst):
    ds = dcmread(src)
    pixels = ds.pixel_array.astype(np.uint16)
    buf = io.BytesIO()
    # Pillow writes 16-bit samples: the header says 16 stored (the values stay below 4096).
    Image.fromarray(pixels).save(buf, format="JPEG2000", irreversible=False, no_jp2=True)
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelData = encapsulate([buf.getvalue()])
    ds["PixelData"].VR = "OB"
    ds["PixelData"].is_undefined_length = True
    ds.file_meta.TransferSyntaxUID = JPEG2000Lossless
    ds.save_as(dst, enforce_file_format=True)


def main():
    out = sys.argv[1]
    tools = {
        "jpeg-lossless-sv1": lambda s, d: subprocess.run(["dcmcjpeg", "+e1", s, d], check=True),
        "jpeg-ls-lossless": lambda s, d: subprocess.run(["dcmcjpls", "+el", s, d], check=True),
        "rle": lambda s, d: subprocess.run(["dcmcrle", s, d], check=True),
        "j2k-lossless": j2k,
    }
    for encoding, encode in tools.items():
        folder = os.path.join(out, "dicom", encoding)
        os.makedirs(folder, exist_ok=True)
        src = os.path.join(out, "work-" + encoding, "base.dcm")
        os.makedirs(os.path.dirname(src), exist_ok=True)
        base(src)
        dst = os.path.join(folder, "dx.dcm")
        encode(src, dst)
        print(dst)


if __name__ == "__main__":
    main()
