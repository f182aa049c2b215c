"""C-STORE of one file over DICOM TLS with a client certificate (pynetdicom).

usage: tls_store.py HOST PORT CALLING CALLED CA CERT KEY FILE [--patient-name NAME]

Prints one line: `REJECTED <result> <source> <reason>` when the association is rejected,
`NO-ASSOCIATION` when it fails otherwise (TLS refused, closed, aborted), else
`STATUS 0xNNNN <error comment>` with the C-STORE response's status.
"""
import argparse
import ssl

from pydicom import dcmread
from pynetdicom import AE, evt
from pynetdicom.pdu import A_ASSOCIATE_RJ


def main():
    import os
    if os.environ.get("TLS_STORE_DEBUG"):
        from pynetdicom import debug_logger
        debug_logger()
    p = argparse.ArgumentParser()
    for name in ["host", "port", "calling", "called", "ca", "cert", "key", "file"]:
        p.add_argument(name)
    p.add_argument("--patient-name")
    a = p.parse_args()
    ds = dcmread(a.file)
    if a.patient_name:
        ds.PatientName = a.patient_name
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=a.ca)
    ctx.load_cert_chain(a.cert, a.key)
    ae = AE(ae_title=a.calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 20
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    # The A-ASSOCIATE-RJ as it is decoded off the wire. pynetdicom's requestor races
    # with itself: when the RJ arrives before its ACSE thread looks at the connection,
    # the DUL thread has already closed it and the association is reported aborted,
    # not rejected. What the acceptor sent is what this tool reports.
    rejections = []

    def on_pdu(event):
        if isinstance(event.pdu, A_ASSOCIATE_RJ):
            rejections.append(event.pdu)

    assoc = ae.associate(
        a.host,
        int(a.port),
        ae_title=a.called,
        tls_args=(ctx, "localhost"),
        evt_handlers=[(evt.EVT_PDU_RECV, on_pdu)],
    )
    if rejections:
        rj = rejections[0]
        print(f"REJECTED {rj.result} {rj.source} {rj.reason_diagnostic}")
        return
    if not assoc.is_established:
        print(f"NO-ASSOCIATION aborted={assoc.is_aborted}")
        return
    status = assoc.send_c_store(ds)
    assoc.release()
    if not status:
        print("NO-RESPONSE")
        return
    print(f"STATUS 0x{status.Status:04X} {status.get('ErrorComment', '')}")


if __name__ == "__main__":
    main()
