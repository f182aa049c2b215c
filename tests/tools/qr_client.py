"""A Query/Retrieve SCU for the tests (pynetdicom): an independent second client besides DCMTK.

usage:
  qr_client.py find PORT LEVEL KEY=VALUE... [--charset CS] [--bytes ENC] [--repeat N]
                                                    one JSON line per match, then the status;
                                                    (0008,0005) is CS (default ISO_IR 192;
                                                    "none" leaves it out); with --bytes,
                                                    non-ASCII values are sent as raw bytes in
                                                    ENC (e.g. latin-1, utf-8, or "hex" for
                                                    VALUE in hex); --repeat sends the query N
                                                    times on the one association
  qr_client.py get PORT OUT_DIR STUDY_UID           C-GET with SCP role selection; data sets
                                                    written to OUT_DIR/<sop uid>.bin
  qr_client.py move PORT DEST STUDY_UID [--cancel-after N]
                                                    C-MOVE; sends C-CANCEL after N pending
                                                    responses when asked

Every response is printed as a JSON line {"status": ..., counts..., "identifier": {...}}.
Calling AE is QRSCU (QR_CALLING overrides it), called AE DULI, host 127.0.0.1. With
QR_TLS_CA, QR_TLS_CERT and QR_TLS_KEY set, the association runs over DICOM TLS with that
CA and client certificate.
"""
import json
import os
import sys

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import (
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
)


# DX, CR, Secondary Capture, Comprehensive SR.
STORAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.1.1",
    "1.2.840.10008.5.1.4.1.1.1",
    "1.2.840.10008.5.1.4.1.1.7",
    "1.2.840.10008.5.1.4.1.1.88.33",
]


def as_dict(ds):
    if ds is None:
        return None
    out = {}
    for elem in ds:
        if elem.VR == "SQ":
            out[elem.keyword] = []
        elif elem.VM > 1:
            out[elem.keyword] = [str(v) for v in elem.value]
        else:
            out[elem.keyword] = "" if elem.value is None else str(elem.value)
    return out


def rsp_line(status, identifier):
    line = {"status": status.Status if status else None}
    if status:
        for key in ("NumberOfRemainingSuboperations", "NumberOfCompletedSuboperations",
                    "NumberOfFailedSuboperations", "NumberOfWarningSuboperations"):
            if key in status:
                line[key] = status.get(key)
        if "ErrorComment" in status:
            line["ErrorComment"] = str(status.ErrorComment)
    line["identifier"] = as_dict(identifier)
    print(json.dumps(line, ensure_ascii=False), flush=True)


def option(args, name, default):
    """Removes `name VALUE` from args; returns VALUE (or default)."""
    if name in args:
        i = args.index(name)
        value = args[i + 1]
        del args[i:i + 2]
        return value
    return default


def find_identifier(level, keys, charset, raw):
    ds = Dataset()
    if charset != "none":
        ds.SpecificCharacterSet = charset
    ds.QueryRetrieveLevel = level
    for kv in keys:
        k, _, v = kv.partition("=")
        if raw == "hex" and v:
            ds.add(DataElement(k, dictionary_VR(k), bytes.fromhex(v)))
        elif raw and not v.isascii():
            ds.add(DataElement(k, dictionary_VR(k), v.encode(raw)))
        else:
            setattr(ds, k, v)
    return ds


def tls_args():
    """(SSLContext, server name) from QR_TLS_*, or None for plain DICOM."""
    ca = os.environ.get("QR_TLS_CA")
    if not ca:
        return None
    import ssl
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.load_cert_chain(os.environ["QR_TLS_CERT"], os.environ["QR_TLS_KEY"])
    return (ctx, "localhost")


def associate(ae, port, handlers=None, roles=None):
    assoc = ae.associate("127.0.0.1", port, ae_title="DULI", evt_handlers=handlers or [],
                         ext_neg=roles or [], tls_args=tls_args())
    if not assoc.is_established:
        print(json.dumps({"error": "association rejected or aborted"}), flush=True)
        sys.exit(3)
    return assoc


def main():
    cmd, port = sys.argv[1], int(sys.argv[2])
    ae = AE(ae_title=os.environ.get("QR_CALLING", "QRSCU"))
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    if cmd == "find":
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
        args = sys.argv[4:]
        charset = option(args, "--charset", "ISO_IR 192")
        raw = option(args, "--bytes", None)
        repeat = int(option(args, "--repeat", "1"))
        ds = find_identifier(sys.argv[3], args, charset, raw)
        assoc = associate(ae, port)
        for _ in range(repeat):
            for status, ident in assoc.send_c_find(
                    ds, StudyRootQueryRetrieveInformationModelFind):
                rsp_line(status, ident)
        assoc.release()
    elif cmd == "get":
        out_dir, study = sys.argv[3], sys.argv[4]
        os.makedirs(out_dir, exist_ok=True)
        # --stall-at N SECONDS: the N-th C-STORE (from 1) is answered only after SECONDS.
        stall = None
        if "--stall-at" in sys.argv:
            at = sys.argv.index("--stall-at")
            stall = (int(sys.argv[at + 1]), float(sys.argv[at + 2]))
        # --abort-at N: the N-th C-STORE is answered by an A-ABORT (and the client exits).
        abort_at = None
        if "--abort-at" in sys.argv:
            abort_at = int(sys.argv[sys.argv.index("--abort-at") + 1])
        stores = [0]

        def on_store(event):
            stores[0] += 1
            if stores[0] == abort_at:
                # Gone at once: A-ABORT, then no waiting on the DIMSE timeout.
                event.assoc.abort()
                sys.stdout.flush()
                os._exit(4)
            if stall is not None and stores[0] == stall[0]:
                import time
                time.sleep(stall[1])
            raw = event.request.DataSet.getvalue()
            with open(os.path.join(out_dir, event.request.AffectedSOPInstanceUID + ".bin"), "wb") as f:
                f.write(raw)
            return 0x0000

        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
        roles = []
        for uid in STORAGE_CLASSES:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
            roles.append(build_role(uid, scp_role=True))
        assoc = associate(ae, port, [(evt.EVT_C_STORE, on_store)], roles)
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study
        for status, ident in assoc.send_c_get(ds, StudyRootQueryRetrieveInformationModelGet):
            rsp_line(status, ident)
        if assoc.is_established:
            assoc.release()
    elif cmd == "move":
        dest, study = sys.argv[3], sys.argv[4]
        cancel_after = None
        if "--cancel-after" in sys.argv:
            cancel_after = int(sys.argv[sys.argv.index("--cancel-after") + 1])
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove)
        assoc = associate(ae, port)
        ctx = [c for c in assoc.accepted_contexts
               if c.abstract_syntax == StudyRootQueryRetrieveInformationModelMove][0]
        ds = Dataset()
        ds.QueryRetrieveLevel = "STUDY"
        ds.StudyInstanceUID = study
        pending = 0
        for status, ident in assoc.send_c_move(ds, dest, StudyRootQueryRetrieveInformationModelMove,
                                               msg_id=7):
            rsp_line(status, ident)
            if status and status.Status in (0xFF00, 0xFF01):
                pending += 1
                if cancel_after is not None and pending == cancel_after:
                    assoc.send_c_cancel(7, ctx.context_id)
        assoc.release()


if __name__ == "__main__":
    main()
