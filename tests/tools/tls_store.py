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
    # The A-ASSOCIATE-RJ as it arrives: pynetdicom may report the association aborted
    # when the connection ends right after it.
    rejections = []
    assoc = ae.associate(
        a.host,
        int(a.port),
        ae_title=a.called,
        tls_args=(ctx, "localhost"),
        evt_handlers=[(evt.EVT_REJECTED, lambda event: rejections.append(event))],
    )
    if assoc.is_rejected or rejections:
        rj = assoc.acceptor.primitive
        detail = f"{rj.result} {rj.result_source} {rj.diagnostic}" if rj else ""
        print(f"REJECTED {detail}".strip())
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
