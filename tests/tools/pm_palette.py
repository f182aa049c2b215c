#!/usr/bin/env python3
"""Why the Parametric Map carries no palette: highdicom's own Parametric Map with a palette
(`PaletteColorLUTTransformation`, Pixel Presentation COLOR_RANGE) against `dciodvfy`.

    .venv/bin/python tests/tools/pm_palette.py [OUT_DIR]

Writes two Parametric Maps made by highdicom from pydicom's CT_small.dcm, the same 16-bit
stored values and real-world value mapping, one without and one with a palette, runs
`dciodvfy` on each and prints the errors it reports. Exit status 0 when the map without a
palette has no error beyond the source's (Laterality) and the one with a palette has
errors in the Image Pixel Description macro, i.e. when the reason given in
docs/dicom-conformance.md still holds; 1 otherwise (then the palette can be sent).
"""

import os
import subprocess
import sys
import tempfile

import highdicom as hd
import numpy as np
import pydicom
from pydicom.data import get_testdata_file
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid


def parametric_map(source, palette):
    mapping = hd.pm.RealWorldValueMapping(
        lut_label="SALIENCY", lut_explanation="Saliency", unit=codes.UCUM.NoUnits,
        value_range=(0, 65535), slope=1 / 65535, intercept=0)
    lut = None
    if palette:
        lut = hd.PaletteColorLUTTransformation.from_colors(
            ["black", "red", "yellow", "white"] * 64)
    pixels = np.zeros((source.Rows, source.Columns), np.uint16)
    return hd.pm.ParametricMap(
        [source], pixels, generate_uid(), 100, generate_uid(), 1, "DULI", "Edge", "1", "1",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        palette_color_lut_transformation=lut)


def errors(path):
    out = subprocess.run(["dciodvfy", path], capture_output=True, text=True)
    return sorted({line for line in (out.stdout + out.stderr).splitlines()
                   if line.startswith("Error")})


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="pm-palette-")
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    found = {}
    for name, palette in (("without palette", False), ("with palette", True)):
        path = os.path.join(out, name.replace(" ", "-") + ".dcm")
        parametric_map(source, palette).save_as(path)
        found[name] = errors(path)
        print("== highdicom %s Parametric Map %s, dciodvfy: %d error(s)"
              % (hd.__version__, name, len(found[name])))
        for line in found[name]:
            print("  " + line)
    beyond_source = [e for e in found["without palette"] if "Laterality" not in e]
    macro = [e for e in found["with palette"] if "ImagePixelDescriptionMacro" in e]
    return 0 if not beyond_source and macro else 1


if __name__ == "__main__":
    sys.exit(main())
