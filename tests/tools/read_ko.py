"""Reads a Key Object Selection Document with highdicom as an IHE IOCM rejection note.

usage: read_ko.py KO.dcm

Prints one JSON object: the document title, the template, the Key Object Description,
the objects the content tree references (value type, SOP class and instance) and the
instances the evidence lists, and each reference as highdicom resolves it through the
evidence (study, series, instance). Exits non-zero when highdicom cannot read it as a Key
Object Selection Document (TID 2010).
"""
import json
import sys

import highdicom as hd
import pydicom

ds = pydicom.dcmread(sys.argv[1])
doc = hd.ko.KeyObjectSelectionDocument.from_dataset(ds)
root = doc.content[0]
title = root.ConceptNameCodeSequence[0]
description = [
    i.TextValue
    for i in root.ContentSequence
    if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
]
# The referenced objects as highdicom's TID 2010 content finds them.
references = [
    {
        "value_type": i.ValueType,
        "sop_class": i.ReferencedSOPSequence[0].ReferencedSOPClassUID,
        "sop_instance": i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID,
    }
    for i in doc.content.get_references()
]
evidence = [
    sop.ReferencedSOPInstanceUID
    for study in ds.CurrentRequestedProcedureEvidenceSequence
    for series in study.ReferencedSeriesSequence
    for sop in series.ReferencedSOPSequence
]
print(
    json.dumps(
        {
            "title": {"value": title.CodeValue, "scheme": title.CodingSchemeDesignator},
            "template": root.ContentTemplateSequence[0].TemplateIdentifier,
            "description": description,
            "references": references,
            "evidence": evidence,
            "resolved": [list(doc.resolve_reference(r["sop_instance"])) for r in references],
        }
    )
)
