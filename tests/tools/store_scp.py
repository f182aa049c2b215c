"""A storage SCP (pynetdicom) that takes only some SOP classes: a PACS that does not
accept every result object.

usage: store_scp.py PORT OUT_DIR SOP_CLASS_UID [SOP_CLASS_UID...]

Accepts associations for any AE title, offers exactly the SOP classes given (Explicit
and Implicit VR Little Endian), writes each instance it receives to OUT_DIR as
<SOP Instance UID>.dcm and answers Success. Runs until killed.
"""
import os
import sys

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

PORT = int(sys.argv[1])
OUT = sys.argv[2]
CLASSES = sys.argv[3:]


def on_store(event):
    ds = event.dataset
    ds.file_meta = event.file_meta
    ds.save_as(os.path.join(OUT, f"{ds.SOPInstanceUID}.dcm"), enforce_file_format=True)
    return 0x0000


ae = AE(ae_title="PICKYPACS")
ae.add_supported_context(Verification)
for uid in CLASSES:
    ae.add_supported_context(uid, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
ae.start_server(("127.0.0.1", PORT), block=True, evt_handlers=[(evt.EVT_C_STORE, on_store)])
