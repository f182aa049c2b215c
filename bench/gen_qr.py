#!/usr/bin/env python3
"""Generate the small-study set of the Q/R benchmark.

COUNT studies of one small Digital X-Ray instance each (gen_dx.py's, 64 x 64: about 10 KB),
for COUNT * 2 / 5 patients (two or three studies each), with names made of a surname
and a given name, study dates spread over two years and a unique accession number per
study. The files are spread over PARTS sub-folders (one per loading association), and
`studies.json` lists each study's patient ID, name, date and accession number, from
which the benchmark draws its queries and knows how many matches each must return.

    gen_qr.py OUT_DIR COUNT [--parts N] [--seed N]

Reuses OUT_DIR when it already holds the same set.
"""

import argparse
import datetime
import json
import os
import random
import shutil
import sys

import numpy as np

from gen_dx import instance, uid

SYLLABLES = ["ka", "lo", "mi", "ren", "sa", "to", "vel", "dor", "an", "be",
             "cor", "fi", "gun", "ha", "jo", "ne", "pa", "ri", "ste", "wu"]
GIVEN = ["Anna", "Ben", "Carla", "David", "Eva", "Farid", "Gina", "Hugo", "Ines", "Jon",
         "Kira", "Luis", "Mona", "Nils", "Olga", "Paul", "Rosa", "Sami", "Tara", "Umar"]
FIRST_DAY = datetime.date(2023, 1, 1)
DAYS = 730


def patients(rng, count):
    """`count` patients: (id, name, birth date, sex)."""
    surnames = sorted({"".join(rng.choice(SYLLABLES) for _ in range(3)).capitalize()
                       for _ in range(count)})
    out = []
    for i in range(count):
        name = "%s^%s" % (rng.choice(surnames), rng.choice(GIVEN))
        birth = FIRST_DAY - datetime.timedelta(days=rng.randrange(365 * 18, 365 * 90))
        out.append(("QR%06d" % i, name, birth.strftime("%Y%m%d"), rng.choice("MF")))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    parser.add_argument("count", type=int)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--seed", type=int, default=20240701)
    args = parser.parse_args()

    stamp = {"count": args.count, "parts": args.parts, "seed": args.seed, "version": 2}
    stamp_path = os.path.join(args.out_dir, "set.json")
    try:
        with open(stamp_path) as f:
            if json.load(f) == stamp:
                print("gen_qr: reusing %d studies in %s" % (args.count, args.out_dir))
                return
    except (OSError, ValueError):
        pass
    shutil.rmtree(args.out_dir, ignore_errors=True)
    for p in range(args.parts):
        os.makedirs(os.path.join(args.out_dir, "part%d" % p))

    rng = random.Random(args.seed)
    noise = np.random.default_rng(args.seed)
    base = np.full((64, 64), 2048.0, dtype=np.float32)
    now = datetime.datetime.now()
    people = patients(rng, max(1, args.count * 2 // 5))
    studies = []
    for n in range(args.count):
        pid, name, birth, sex = people[n % len(people)]
        date = FIRST_DAY + datetime.timedelta(days=rng.randrange(DAYS))
        study = {
            "patient_id": pid,
            "patient_name": name,
            "study_date": date.strftime("%Y%m%d"),
            "accession": "ACC%07d" % n,
            "study_uid": uid(),
        }
        ds = instance(base, noise, 0, {"number": n + 1, "study_uid": study["study_uid"],
                                       "series_uid": uid(), "size": 1}, 64, 64, now)
        ds.PatientID, ds.PatientName = pid, name
        ds.PatientBirthDate, ds.PatientSex = birth, sex
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = study["study_date"]
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "%02d%02d00" % (
            rng.randrange(7, 19), rng.randrange(60))
        ds.AccessionNumber = study["accession"]
        ds.StudyDescription = "CHEST PA"
        ds.save_as(os.path.join(args.out_dir, "part%d" % (n % args.parts), "s%06d.dcm" % n),
                   enforce_file_format=True)
        studies.append(study)
    with open(os.path.join(args.out_dir, "studies.json"), "w") as f:
        json.dump(studies, f)
    with open(stamp_path, "w") as f:
        json.dump(stamp, f)
    print("gen_qr: wrote %d studies of one instance (%d patients) to %s"
          % (args.count, len(people), args.out_dir))


if __name__ == "__main__":
    sys.exit(main())
