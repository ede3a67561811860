"""The generic selector (``--selector``, experimental) judged leave-one-source-out: per source, the top-1
hit_half of each plane for the selector fitted without that source, today's default (findings mode) and a
random slice; the lesion-free planes that claim a finding; the candidates' time per scan; optionally the same
with one descriptor left out (``--drop``), and a refit on everything written as the shipped model.

    python Testing/bench_selector.py [data_dir ...] [--normal IMAGE] [--lesion-free IMAGE] [--drop NAME]
                                     [--no-slabs] [--write-model]
    (default: ../shared/data and ../shared/data/sarcoma, Colin27 and each case's lesion-free slab as the
    lesion-free training scans, Colin27 and the two ../shared/data/pelvis scans as the lesion-free scans judged;
    --no-slabs leaves the slabs out)

The judgement itself is ``votemi bench DATA_DIR... --leave-one-source-out`` (:mod:`VoteMILib.selector_bench`);
this script adds the ablation and writes the shipped model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VoteMI"))

from VoteMILib.datasets import bench_cases  # noqa: E402
from VoteMILib.selector_bench import format_table, judge_selector  # noqa: E402
from VoteMILib.selector_candidates import DESCRIPTORS  # noqa: E402
from VoteMILib.selector_model import SHIPPED_MODEL  # noqa: E402
from VoteMILib.selector_training import SLAB_SUFFIX, fit_records, leave_one_source_out  # noqa: E402

COLIN27 = "/usr/share/mricron/templates/ch2.nii.gz"
PELVIS = REPO.parent / "shared" / "data" / "pelvis"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = REPO.parent / "shared" / "data"
    parser.add_argument("folders", nargs="*", default=[str(data), str(data / "sarcoma")])
    parser.add_argument("--normal", action="append", default=None, metavar="IMAGE")
    parser.add_argument("--lesion-free", action="append", default=None, metavar="IMAGE",
                        help="lesion-free scan whose planes' claims are counted (repeatable)")
    parser.add_argument("--drop", choices=DESCRIPTORS, help="also judge the selector without this descriptor")
    parser.add_argument("--l2", type=float, default=1.0)
    parser.add_argument("--no-slabs", action="store_true",
                        help="leave out the cases' lesion-free slabs (30 mm from the mask) as training negatives")
    parser.add_argument("--write-model", action="store_true", help=f"refit on everything and write {SHIPPED_MODEL}")
    args = parser.parse_args(argv)
    judged = args.lesion_free
    if judged is None:
        judged = [COLIN27, *sorted(str(path) for path in PELVIS.glob("*/image.nii.gz"))]
    judgement = judge_selector(bench_cases(args.folders), args.normal if args.normal is not None else [COLIN27],
                               judged, args.l2, progress=lambda line: print(line, flush=True),
                               slabs=not args.no_slabs)
    records = judgement.records
    print()
    print(judgement.table)
    print()
    print(judgement.claims)
    seconds = judgement.seconds
    print(f"\nworking grid, candidates, cue evidence and descriptors per scan: median "
          f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s ({len(seconds)} scans)")
    if args.write_model:
        sources = sorted({r.source for r in records})
        count = sum(r.name.endswith(SLAB_SUFFIX) for r in records)
        model = fit_records(records, args.l2, note=f"fitted on {len(records) - count} scans and {count} lesion-free "
                                                   f"slabs of {', '.join(sources)} by Testing/bench_selector.py, "
                                                   f"l2={args.l2:g}")
        model.save(SHIPPED_MODEL)
        print(f"wrote {SHIPPED_MODEL}")
        print("coefficients (standardised): " + ", ".join(f"{n} {c:+.2f}" for n, c in zip(model.names, model.coef))
              + f"; intercept {model.intercept:+.2f}; stood-out threshold {model.stands_out:.3f}")
    if args.drop:
        column = DESCRIPTORS.index(args.drop)
        for record in records:
            record.descriptors[:, column] = 0.0  # a constant column standardises to 0: the fit cannot use it
        print(f"\nwithout {args.drop}:")
        print(format_table(records, leave_one_source_out(records, args.l2), judgement.findings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
