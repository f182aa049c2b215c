#!/usr/bin/env python3
"""Query/Retrieve benchmark driver (run through bench/qr.sh).

Both peers (Orthanc and `duli run`) run side by side on loopback, each with its own fresh
storage. Each is loaded with the small-study set (gen_qr.py: one small instance per study)
by storescu over parallel associations, and with the retrieve study (gen_dx.py
--per-study: one study of ~10 MB instances) over one association. Then the peers take
turns, query by query and move by move (so that load from elsewhere on a shared machine
falls on both alike):

- C-FIND at study level over one association per peer: the same shuffled mix of queries
  (PatientID exact, PatientName wildcard `Surname*`, StudyDate range of 1 to 7 days,
  AccessionNumber exact), each timed from the request to its final response, and each
  answer checked against the number of matches the set implies;
- C-MOVE of the retrieve study to DCMTK storescp (`--ignore`: receives every byte, writes
  nothing, so the receiver's disk is no part of the figure), timed from the request to
  the final response; the same receiver serves both peers.

The client is bench/scu.py (a minimal SCU on a raw socket with TCP_NODELAY: it counts the
responses without decoding them, so the figures are the peers' own); Orthanc and
storescp run with TCP_NODELAY=1 (DCMTK leaves Nagle's algorithm on otherwise). duli runs
with a quiet period longer than the run, so no study completes and nothing but the SCP
works during it. `--before BIN` with `before` in `--peers` adds a second duli (another
build) as a third peer taking its turn like the others: a before/after comparison under the
same load.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import time

from pydicom.dataset import Dataset

import scu
from ingest import (PEER_ENV, duli_stored, free_port, http_json, send, settle,
                    start_duli, start_orthanc, stop, wait_port)

FIND = "1.2.840.10008.5.1.4.1.2.2.1"  # Study Root Q/R - FIND
MOVE = "1.2.840.10008.5.1.4.1.2.2.2"  # Study Root Q/R - MOVE
KINDS = ("PatientID exact", "PatientName wildcard", "StudyDate range", "Accession exact")
RECEIVER_AET = "RECEIVER"
# What a viewer's study list asks for.
RETURN_KEYS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate",
               "StudyTime", "AccessionNumber", "StudyID", "StudyInstanceUID",
               "StudyDescription", "ReferringPhysicianName", "ModalitiesInStudy",
               "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")


def make_queries(studies, count, seed):
    """`count` queries, an even shuffled mix of the four kinds: (kind, keys, expected)."""
    rng = random.Random(seed)
    queries = []
    for n in range(count):
        kind = KINDS[n % len(KINDS)]
        s = rng.choice(studies)
        if kind == "PatientID exact":
            keys = {"PatientID": s["patient_id"]}
            expected = sum(1 for t in studies if t["patient_id"] == s["patient_id"])
        elif kind == "PatientName wildcard":
            prefix = s["patient_name"].split("^")[0]
            keys = {"PatientName": prefix + "*"}
            expected = sum(1 for t in studies
                           if t["patient_name"].upper().startswith(prefix.upper()))
        elif kind == "StudyDate range":
            lo = s["study_date"]
            first = datetime.datetime.strptime(lo, "%Y%m%d")
            hi = (first + datetime.timedelta(days=rng.randrange(7))).strftime("%Y%m%d")
            keys = {"StudyDate": "%s-%s" % (lo, hi)}
            expected = sum(1 for t in studies if lo <= t["study_date"] <= hi)
        else:
            keys = {"AccessionNumber": s["accession"]}
            expected = 1
        queries.append((kind, keys, expected))
    rng.shuffle(queries)
    return queries


def identifier(keys):
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    for k in RETURN_KEYS:
        setattr(ds, k, "")
    for k, v in keys.items():
        setattr(ds, k, v)
    return ds


def c_find(assoc, keys):
    """One C-FIND; returns (seconds, matches, final status)."""
    ds = identifier(keys)
    start = time.perf_counter()
    matches, status = assoc.find(FIND, ds)
    return time.perf_counter() - start, matches, status


def run_finds(assocs, queries, warmup):
    """Times every query on every peer, the peers taking turns query by query (so load
    from elsewhere falls on both alike); returns {peer: ({kind: [(seconds, matches)]},
    wrong answers)}."""
    for _, keys, _ in queries[:warmup]:
        for assoc in assocs.values():
            c_find(assoc, keys)
    out = {peer: ({}, []) for peer in assocs}
    for n, (kind, keys, expected) in enumerate(queries):
        order = list(assocs.items())
        if n % 2:
            order.reverse()
        for peer, assoc in order:
            seconds, matches, final = c_find(assoc, keys)
            times, wrong = out[peer]
            if final != 0 or matches != expected:
                wrong.append("%s %s: %d match(es), expected %d, final status %s"
                             % (kind, keys, matches, expected, final))
            times.setdefault(kind, []).append((seconds, matches))
    return out


def c_move(assoc, study_uid):
    """One C-MOVE of a study to the receiver; returns (seconds, completed, failed)."""
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    start = time.perf_counter()
    status, completed, failed = assoc.move(MOVE, ds, RECEIVER_AET)
    seconds = time.perf_counter() - start
    if status != 0:
        print("  C-MOVE final status %04X" % status)
    return seconds, completed, failed


def load(files, aec, port, assocs, what):
    seconds, failures = send(files, aec, port, assocs)
    for f in failures:
        print("  %s: storescu failed loading %s: %s" % (aec, what, f.strip()))
    print("  %s: loaded %d %s in %.1f s over %d association(s)"
          % (aec, len(files), what, seconds, assocs), flush=True)


def wait_count(count_fn, expected, timeout=120):
    deadline = time.time() + timeout
    n = count_fn()
    while n != expected and time.time() < deadline:
        time.sleep(0.5)
        n = count_fn()
    return n


def prepare(name, port, aec, count_fn, args, small, big):
    """Loads both sets into a peer and waits until it holds them."""
    print("%s:" % name, flush=True)
    load(small, aec, port, args.load_assocs, "small studies")
    load(big, aec, port, 1, "retrieve instances")
    stored = wait_count(count_fn, len(small) + len(big))
    if stored != len(small) + len(big):
        print("  %s: WARNING holds %s instances, expected %d"
              % (name, stored, len(small) + len(big)))


def measure(peers, args, queries, study_uid):
    """C-FIND and C-MOVE on every peer in turn; returns results by peer."""
    settle()
    assocs = {name: scu.Association(port, aec, [FIND, MOVE])
              for name, (port, aec) in peers.items()}
    try:
        finds = run_finds(assocs, queries, args.warmup)
        moves = {name: [] for name in peers}
        for n in range(args.moves):
            order = list(assocs.items())
            if n % 2:
                order.reverse()
            for name, assoc in order:
                moves[name].append(c_move(assoc, study_uid))
                print("  %s: C-MOVE %.2f s, %d completed, %d failed"
                      % (name, *moves[name][-1]), flush=True)
    finally:
        for assoc in assocs.values():
            assoc.release()
    results = {}
    for name in peers:
        times, wrong = finds[name]
        for w in wrong[:5]:
            print("  %s: WRONG ANSWER %s" % (name, w))
        if len(wrong) > 5:
            print("  %s: ... %d wrong answers in all" % (name, len(wrong)))
        results[name] = {"finds": times, "wrong": len(wrong), "moves": moves[name]}
    return results


def ms(xs, q):
    xs = sorted(xs)
    if q == 50:
        return statistics.median(xs) * 1000
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] * 1000


def report(results, big_bytes, instances, n_studies):
    print()
    print("C-FIND, study level, %d studies in the store, one association per peer "
          "(taking turns), each query timed to its final response:" % n_studies)
    fmt = "%-8s %-22s %5s %9s %8s %8s %9s"
    print(fmt % ("peer", "query", "n", "median ms", "p99 ms", "max ms", "matches"))
    for peer, r in results.items():
        everything = []
        for kind in KINDS:
            rows = r["finds"].get(kind, [])
            if not rows:
                continue
            secs = [t for t, _ in rows]
            everything += secs
            print(fmt % (peer, kind, len(rows), "%.1f" % ms(secs, 50), "%.1f" % ms(secs, 99),
                         "%.1f" % (max(secs) * 1000),
                         "%.1f" % statistics.mean(m for _, m in rows)))
        if everything:
            print(fmt % (peer, "all", len(everything), "%.1f" % ms(everything, 50),
                         "%.1f" % ms(everything, 99), "%.1f" % (max(everything) * 1000),
                         "wrong: %d" % r["wrong"]))
    print()
    mb = big_bytes / 1e6
    print("C-MOVE of one study, %d instances, %.0f MB, to storescp --ignore (median of runs):"
          % (instances, mb))
    fmt = "%-8s %5s %8s %8s %10s %6s"
    print(fmt % ("peer", "runs", "seconds", "MB/s", "vs orthanc", "sent"))
    base = None
    if "orthanc" in results and results["orthanc"]["moves"]:
        base = statistics.median(m[0] for m in results["orthanc"]["moves"])
    for peer, r in results.items():
        if not r["moves"]:
            continue
        secs = statistics.median(m[0] for m in r["moves"])
        sent = min(m[1] for m in r["moves"])
        print(fmt % (peer, len(r["moves"]), "%.2f" % secs, "%.0f" % (mb / secs),
                     "%.2fx" % (base / secs) if base else "-", "%d" % sent))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("small_dir")
    parser.add_argument("big_dir")
    parser.add_argument("--work", required=True)
    parser.add_argument("--duli", default="")
    parser.add_argument("--before", default="",
                        help="a second duli binary, measured as peer 'before' (list it "
                             "in --peers), for a before/after comparison under equal load")
    parser.add_argument("--peers", default="orthanc,duli")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--moves", type=int, default=4)
    parser.add_argument("--load-assocs", type=int, default=4)
    args = parser.parse_args()

    with open(os.path.join(args.small_dir, "studies.json")) as f:
        studies = json.load(f)
    small = sorted(os.path.join(root, f) for root, _, fs in os.walk(args.small_dir)
                   for f in fs if f.endswith(".dcm"))
    big = sorted(os.path.join(args.big_dir, f) for f in os.listdir(args.big_dir)
                 if f.endswith(".dcm"))
    big_bytes = sum(os.path.getsize(f) for f in big)
    from pydicom import dcmread
    study_uid = dcmread(big[0], stop_before_pixels=True).StudyInstanceUID
    queries = make_queries(studies, args.queries, seed=7)
    print("sets: %d small studies (%d instances), retrieve study %d instances, %.0f MB; "
          "%d queries (+%d warm-up), %d C-MOVE run(s)"
          % (len(studies), len(small), len(big), big_bytes / 1e6, len(queries), args.warmup,
             args.moves), flush=True)

    receiver_port = free_port()
    receiver = subprocess.Popen(
        ["storescp", "--ignore", "--max-pdu", "131072", "-aet", RECEIVER_AET,
         str(receiver_port)],
        env=PEER_ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = os.path.join(os.path.abspath(args.work), "qr")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    running, peers = [], {}
    try:
        if not wait_port(receiver_port, receiver):
            sys.exit("storescp (the C-MOVE receiver) did not start")
        for peer in args.peers.split(","):
            if peer == "orthanc":
                started = start_orthanc(os.path.join(work, "orthanc"), {
                    # Loading speed is no part of this benchmark: no fsync per file.
                    "SyncStorageArea": False,
                    "DicomAlwaysAllowFind": True,
                    "DicomAlwaysAllowMove": True,
                    "DicomModalities": {
                        "receiver": [RECEIVER_AET, "127.0.0.1", receiver_port]},
                })
                if started is None:
                    continue
                proc, dicom_port, http_port, log = started
                count = lambda port=http_port: http_json(port, "/statistics")["CountInstances"]
                aec = "ORTHANC"
            elif peer in ("duli", "before"):
                binary = args.duli if peer == "duli" else args.before
                if not binary:
                    sys.exit("peer %s: no binary given" % peer)
                settings = {
                    "DULI_DICOM__QUIET_PERIOD": "86400",
                    "DULI_PACS__DESTINATIONS":
                        '[{name = "receiver", ae_title = "%s", host = "127.0.0.1", '
                        'port = %d, move = true}]' % (RECEIVER_AET, receiver_port),
                }
                if peer == "duli":
                    # The benchmark measures speed, not the per-AE request rate limit (a
                    # setting an older build would refuse as unknown).
                    settings["DULI_DICOM__MAX_QR_REQUESTS_PER_MINUTE"] = "1000000"
                started = start_duli(os.path.join(work, peer), binary, settings)
                if started is None:
                    continue
                proc, dicom_port, console_port, log = started
                count = lambda port=console_port: duli_stored(port)
                aec = "DULI"
            else:
                sys.exit("unknown peer %s" % peer)
            running.append((proc, log))
            prepare(peer, dicom_port, aec, count, args, small, big)
            peers[peer] = (dicom_port, aec)
        print("measuring (the peers take turns, query by query and move by move)",
              flush=True)
        results = measure(peers, args, queries, study_uid)
    finally:
        for proc, log in running:
            stop(proc)
            log.close()
        stop(receiver)
        shutil.rmtree(work, ignore_errors=True)
    report(results, big_bytes, len(big), len(studies))


if __name__ == "__main__":
    main()
