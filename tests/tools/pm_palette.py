#!/usr/bin/env python3
"""Why the Parametric Map names its palette by UID instead of embedding it: three
Parametric Maps made by highdicom from pydicom's CT_small.dcm (the same 16-bit stored
values and real-world value mapping) against `dciodvfy`:

- without a palette;
- with highdicom's palette (`PaletteColorLUTTransformation`, Pixel Presentation
  COLOR_RANGE, the lookup table data embedded);
- the form the appliance writes: COLOR_RANGE with the well-known Hot Iron palette named by
  Palette Color Lookup Table UID, an sRGB ICC profile and a Stored Value Color Range in the
  shared functional groups, no lookup table data.

    .venv/bin/python tests/tools/pm_palette.py [OUT_DIR]

Prints the errors `dciodvfy` reports for each. Exit status 0 when the reasons given in
docs/dicom-conformance.md still hold: the embedded palette draws errors in the Image Pixel
Description macro, and the UID form draws none beyond the source's (Laterality) and the two
"Non-string attribute" lines of Debian 12's dciodvfy on Minimum/Maximum Stored Value Mapped;
1 otherwise.
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
    # highdicom asks how the integer values are windowed for display.
    voi = [hd.VOILUTTransformation(window_center=32768, window_width=65536)]
    pixels = np.zeros((source.Rows, source.Columns), np.uint16)
    return hd.pm.ParametricMap(
        [source], pixels, generate_uid(), 100, generate_uid(), 1, "DULI", "Edge", "1", "1",
        contains_recognizable_visual_features=False, real_world_value_mappings=[mapping],
        palette_color_lut_transformation=lut, voi_lut_transformations=voi)


def uid_form(source):
    """The appliance's form: palette by well-known UID, ICC profile, stored value range."""
    pm = parametric_map(source, True)
    for kw in ("Red", "Green", "Blue"):
        for part in ("PaletteColorLookupTableDescriptor", "PaletteColorLookupTableData",
                     "SegmentedPaletteColorLookupTableData"):
            name = part.replace("Segmented", "Segmented" + kw) if part.startswith("Segmented") \
                else kw + part
            if name in pm:
                delattr(pm, name)
    pm.PaletteColorLookupTableUID = "1.2.840.10008.1.5.1"
    pm.ICCProfile = open(os.path.join(os.path.dirname(hd.__file__),
                                      "_icc_profiles", "sRGB_v4_ICC_preference.icc"), "rb").read()
    item = pydicom.Dataset()
    item.MinimumStoredValueMapped = 0.0
    item.MaximumStoredValueMapped = 65535.0
    pm.SharedFunctionalGroupsSequence[0].StoredValueColorRangeSequence = [item]
    return pm


def errors(path):
    out = subprocess.run(["dciodvfy", path], capture_output=True, text=True)
    return sorted({line for line in (out.stdout + out.stderr).splitlines()
                   if line.startswith("Error")})


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="pm-palette-")
    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    found = {}
    for name, make in (("without palette", lambda: parametric_map(source, False)),
                       ("with embedded palette", lambda: parametric_map(source, True)),
                       ("with palette by UID", lambda: uid_form(source))):
        path = os.path.join(out, name.replace(" ", "-") + ".dcm")
        make().save_as(path)
        found[name] = errors(path)
        print("== highdicom %s Parametric Map %s, dciodvfy: %d error(s)"
              % (hd.__version__, name, len(found[name])))
        for line in found[name]:
            print("  " + line)
    macro = [e for e in found["with embedded palette"] if "ImagePixelDescriptionMacro" in e]
    beyond = [e for e in found["with palette by UID"]
              if "Laterality" not in e and "Stored Value Mapp" not in e]
    return 0 if macro and not beyond else 1


if __name__ == "__main__":
    sys.exit(main())
