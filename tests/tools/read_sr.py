"""Reads a DICOM SR with highdicom as an IHE AI Results TID 1500 measurement report.

usage: read_sr.py SR.dcm

Prints one JSON object: the document title, the observer context, the procedure
reported, and per measurement group (TID 1501) its tracking identifier and UID, the
finding code, the algorithm identification (TID 4019), every measurement (name, value,
unit) and every qualitative evaluation (name, value). Exits non-zero when highdicom
cannot read the document as a measurement report.
"""
import json
import sys

import highdicom as hd


def items(container, value):
    """Values of the content items named `value` (DCM) directly in `container`."""
    out = []
    for item in container.get("ContentSequence", []):
        name = item.ConceptNameCodeSequence[0] if "ConceptNameCodeSequence" in item else None
        if name is not None and name.CodeValue == value:
            if item.ValueType == "TEXT":
                out.append(item.TextValue)
            elif item.ValueType == "CODE":
                out.append(code(hd.sr.CodedConcept.from_dataset(item.ConceptCodeSequence[0])))
    return out


def code(c):
    return None if c is None else {
        "value": c.value, "scheme": c.scheme_designator, "meaning": c.meaning
    }


sr = hd.sr.srread(sys.argv[1])
report = sr.content
if not isinstance(report, hd.sr.MeasurementReport):
    sys.exit(f"not a TID 1500 measurement report: {type(report).__name__}")
groups = []
for g in report.get_image_measurement_groups():
    names = items(g[0], "111001")
    algo = {"name": names[0], "version": items(g[0], "111003")[0],
            "parameters": items(g[0], "111002")} if names else None
    groups.append({
        "tracking_identifier": g.tracking_identifier,
        "tracking_uid": str(g.tracking_uid) if g.tracking_uid else None,
        "finding": code(g.finding_type),
        "algorithm": algo,
        "measurements": [
            {"name": code(m.name), "value": float(m.value), "unit": code(m.unit)}
            for m in g.get_measurements()
        ],
        "evaluations": [
            {"name": code(q.name), "value": code(q.value)}
            for q in g.get_qualitative_evaluations()
        ],
    })
print(json.dumps({
    "title": code(hd.sr.CodedConcept.from_dataset(sr.ConceptNameCodeSequence[0])),
    "template": sr.ContentTemplateSequence[0].TemplateIdentifier,
    "observer_type": code(report.get_observer_contexts()[0].observer_type)
    if report.get_observer_contexts() else None,
    "procedure_reported": items(sr, "121058"),
    "groups": groups,
}))
