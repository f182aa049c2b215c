#!/usr/bin/env python3
"""Peak memory of `duli run` while it answers a C-GET of one large study.

    cget_rss.py DULI_BIN DX_DIR [--work DIR] [--repeats N]

DX_DIR holds one study (e.g. `gen_dx.py bench/out/dx-move-200 200 --per-study 200`:
200 x 10 MB). The study is sent to a fresh `duli run` with storescu; then the kernel's
high-water mark of the daemon is reset (`echo 5 > /proc/PID/clear_refs`) and a pynetdicom
C-GET SCU retrieves the whole study, discarding each instance as it arrives. Printed: the
daemon's resident set before the C-GET, its VmHWM during it (the peak, in MiB) and the
growth, the instances and bytes received and the seconds taken.
"""

import argparse
import os
import shutil
import sys
import time

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ingest import duli_stored, send, start_duli, status_kib, stop  # noqa: E402


def c_get(port, study, sop_classes, syntaxes):
    """Retrieves `study`; returns (instances, bytes, seconds, final status)."""
    got = {"n": 0, "bytes": 0}

    def on_store(event):
        got["n"] += 1
        got["bytes"] += len(event.request.DataSet.getvalue())
        return 0x0000

    ae = AE(ae_title="GETSCU")
    ae.maximum_pdu_size = 262144
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet)
    roles = []
    for cls in sop_classes:
        ae.add_requested_context(cls, syntaxes)
        roles.append(build_role(cls, scp_role=True))
    assoc = ae.associate("127.0.0.1", port, ae_title="DULI", ext_neg=roles,
                         evt_handlers=[(evt.EVT_C_STORE, on_store)])
    if not assoc.is_established:
        sys.exit("C-GET association not established")
    ident = Dataset()
    ident.QueryRetrieveLevel = "STUDY"
    ident.StudyInstanceUID = study
    start = time.perf_counter()
    status = None
    for st, _ in assoc.send_c_get(ident, StudyRootQueryRetrieveInformationModelGet):
        if st is not None:
            status = st.Status
    seconds = time.perf_counter() - start
    assoc.release()
    return got["n"], got["bytes"], seconds, status


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("duli")
    p.add_argument("dx_dir")
    p.add_argument("--work", default=os.path.join(os.path.dirname(__file__), "out", "work-cget"))
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    files = sorted(os.path.join(args.dx_dir, f) for f in os.listdir(args.dx_dir)
                   if f.endswith(".dcm"))
    first = dcmread(files[0], stop_before_pixels=True)
    study = first.StudyInstanceUID
    syntaxes = [str(first.file_meta.TransferSyntaxUID)]
    shutil.rmtree(args.work, ignore_errors=True)
    started = start_duli(os.path.join(args.work, "duli"), args.duli,
                         {"DULI_DICOM__QUIET_PERIOD": "86400"})
    if started is None:
        sys.exit(1)
    proc, dicom_port, console_port, log = started
    try:
        seconds, failures = send(files, "DULI", dicom_port, 1)
        stored = duli_stored(console_port)
        print("stored %s of %d instances in %.1f s (failures: %s)"
              % (stored, len(files), seconds, failures), flush=True)
        for _ in range(args.repeats):
            time.sleep(2)
            before = status_kib(proc.pid, "VmRSS")
            with open("/proc/%d/clear_refs" % proc.pid, "w") as f:
                f.write("5")
            n, size, secs, status = c_get(dicom_port, study, [first.SOPClassUID], syntaxes)
            hwm = status_kib(proc.pid, "VmHWM")
            print("C-GET %d instances, %.0f MB in %.1f s (final status %s): RSS before "
                  "%.1f MiB, VmHWM during %.1f MiB, growth %.1f MiB"
                  % (n, size / 1e6, secs, "%04X" % status if status is not None else "-",
                     before / 1024, hwm / 1024, (hwm - before) / 1024), flush=True)
    finally:
        stop(proc)
        log.close()
        shutil.rmtree(args.work, ignore_errors=True)


if __name__ == "__main__":
    main()
