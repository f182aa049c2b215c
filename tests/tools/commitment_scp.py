"""A storage SCP with Storage Commitment (pynetdicom) that sends its report on the
association that asked: an archive that answers N-ACTION, then, while the requestor keeps
the association open, sends the N-EVENT-REPORT on it.

usage: commitment_scp.py PORT AE_TITLE

Accepts every storage SOP class and Storage Commitment Push Model (Explicit and Implicit
VR Little Endian), keeps the SOP Instance UIDs it stored, and reports each commitment
request 0.3 s after answering it: committed what it stored, failed (0112H) what it did
not. Knows no other AE (it never opens an association). Runs until killed.
"""
import sys
import threading

from pydicom.dataset import Dataset
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import StorageCommitmentPushModel

PORT = int(sys.argv[1])
AE_TITLE = sys.argv[2]
WELL_KNOWN = "1.2.840.10008.1.20.1.1"
stored = set()


def on_store(event):
    stored.add(str(event.request.AffectedSOPInstanceUID))
    return 0x0000


def report(assoc, request):
    info = Dataset()
    info.TransactionUID = request.TransactionUID
    committed, failed = [], []
    for ref in request.ReferencedSOPSequence:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.ReferencedSOPClassUID
        item.ReferencedSOPInstanceUID = ref.ReferencedSOPInstanceUID
        if str(ref.ReferencedSOPInstanceUID) in stored:
            committed.append(item)
        else:
            item.FailureReason = 0x0112
            failed.append(item)
    if committed:
        info.ReferencedSOPSequence = committed
    if failed:
        info.FailedSOPSequence = failed
    status, _ = assoc.send_n_event_report(
        info, 2 if failed else 1, StorageCommitmentPushModel, WELL_KNOWN
    )
    print(f"report sent on the same association: status {status.Status:04X}", flush=True)


def on_action(event):
    request = event.action_information
    threading.Timer(0.3, report, args=(event.assoc, request)).start()
    return 0x0000, None


ae = AE(ae_title=AE_TITLE)
for context in AllStoragePresentationContexts:
    ae.add_supported_context(context.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
ae.add_supported_context(StorageCommitmentPushModel, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
ae.start_server(
    ("127.0.0.1", PORT),
    block=True,
    evt_handlers=[(evt.EVT_C_STORE, on_store), (evt.EVT_N_ACTION, on_action)],
)
