"""Reads a DICOM Parametric Map with highdicom and applies its palette and value mapping.

usage: read_pm.py PM.dcm

Prints one JSON object: the pixel presentation, the palette UID, the stored value color
range, the ICC profile's size, the real-world value mapping of the frame (label, slope,
intercept, first and last value mapped, as double floats for Float Pixel Data) and the saliency (real-world value) of the
smallest and the largest stored value. Exits non-zero when highdicom cannot read it as a
Parametric Map.
"""
import json
import sys

import highdicom as hd
import pydicom


def main():
    ds = pydicom.dcmread(sys.argv[1])
    pm = hd.pm.ParametricMap.from_dataset(ds)
    shared = pm.SharedFunctionalGroupsSequence[0]
    rwvm = shared.RealWorldValueMappingSequence[0]
    svcr = shared.StoredValueColorRangeSequence[0]
    pixels = pm.pixel_array
    to_real = lambda v: float(v) * float(rwvm.RealWorldValueSlope) + float(rwvm.RealWorldValueIntercept)
    print(json.dumps({
        "sop_class": pm.SOPClassUID,
        "pixel_presentation": pm.PixelPresentation,
        "palette_uid": pm.get("PaletteColorLookupTableUID"),
        "color_range": [float(svcr.MinimumStoredValueMapped), float(svcr.MaximumStoredValueMapped)],
        "icc_bytes": len(pm.ICCProfile),
        "lut_label": rwvm.LUTLabel,
        "float_pixels": "FloatPixelData" in pm,
        "first_last_mapped": [float(rwvm.DoubleFloatRealWorldValueFirstValueMapped),
                              float(rwvm.DoubleFloatRealWorldValueLastValueMapped)],
        "saliency_range": [to_real(pixels.min()), to_real(pixels.max())],
        "rows_columns": [int(pm.Rows), int(pm.Columns)],
    }))


if __name__ == "__main__":
    main()
