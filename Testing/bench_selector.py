"""The generic selector (``--selector``, experimental) judged leave-one-source-out: per source, the top-1
hit_half of each plane for the selector fitted without that source, today's default (findings mode) and a
random slice; the lesion-free planes that claim a finding; the candidates' time per scan; optionally the same
with one descriptor left out (``--drop``), and a refit on everything written as the shipped model.

    python Testing/bench_selector.py [data_dir ...] [--normal IMAGE] [--lesion-free IMAGE] [--drop NAME]
                                     [--write-model]
    (default: ../shared/data and ../shared/data/sarcoma, Colin27 as the lesion-free training scan, Colin27
    and the two ../shared/data/pelvis scans as the lesion-free scans judged)
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VoteMI"))

from VoteMILib.bench import score_slice  # noqa: E402
from VoteMILib.bench_sources import source_of  # noqa: E402
from VoteMILib.datasets import bench_cases, load_mask  # noqa: E402
from VoteMILib.geometry import PLANES  # noqa: E402
from VoteMILib.selection import select_slices  # noqa: E402
from VoteMILib.selector_candidates import DESCRIPTORS  # noqa: E402
from VoteMILib.selector_model import SHIPPED_MODEL  # noqa: E402
from VoteMILib.selector_training import (NORMAL_SOURCE, fit_records, leave_one_source_out,  # noqa: E402
                                         scan_record)
from VoteMILib.volumes import load_volume  # noqa: E402

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
    parser.add_argument("--write-model", action="store_true", help=f"refit on everything and write {SHIPPED_MODEL}")
    args = parser.parse_args(argv)
    records, findings = [], {}
    for case in bench_cases(args.folders):
        if not case.mask:
            continue
        volume = load_volume(case.image)
        mask = load_mask(case.mask, volume)
        records.append(scan_record(case.name, volume, mask, source_of(case.name, case.source)))
        result = select_slices(volume, top_k=1)  # today's default selection
        findings[case.name] = {p: score_slice(result.planes[p].selected[0].index, records[-1].lesion_areas[p],
                                              records[-1].positions[p])["hit_half"] for p in PLANES}
        print(f"{case.name}: {records[-1].source}, {len(records[-1].labels)} candidates "
              f"(positive label mass {records[-1].labels.sum():.1f}), {records[-1].seconds:.2f} s", flush=True)
    for path in args.normal if args.normal is not None else [COLIN27]:
        records.append(scan_record(Path(path).name, load_volume(path), None, NORMAL_SOURCE))
    scores = leave_one_source_out(records, args.l2)
    print()
    print(format_table(records, scores, findings))
    judged = args.lesion_free
    if judged is None:
        judged = [COLIN27, *sorted(str(path) for path in PELVIS.glob("*/image.nii.gz"))]
    clean = [scan_record(_scan_name(path), load_volume(path), None, NORMAL_SOURCE) for path in judged]
    print()
    print(format_claims(records, clean, args.l2))
    seconds = [r.seconds for r in records + clean]
    print(f"\nworking grid, candidates, cue evidence and descriptors per scan: median "
          f"{statistics.median(seconds):.2f} s, max {max(seconds):.2f} s ({len(seconds)} scans)")
    if args.write_model:
        sources = sorted({r.source for r in records})
        model = fit_records(records, args.l2, note=f"fitted on {len(records)} scans of {', '.join(sources)} "
                                                   f"by Testing/bench_selector.py, l2={args.l2:g}")
        model.save(SHIPPED_MODEL)
        print(f"wrote {SHIPPED_MODEL}")
        print("coefficients (standardised): " + ", ".join(f"{n} {c:+.2f}" for n, c in zip(model.names, model.coef))
              + f"; intercept {model.intercept:+.2f}; stood-out threshold {model.stands_out:.3f}")
    if args.drop:
        column = DESCRIPTORS.index(args.drop)
        for record in records:
            record.descriptors[:, column] = 0.0  # a constant column standardises to 0: the fit cannot use it
        print(f"\nwithout {args.drop}:")
        print(format_table(records, leave_one_source_out(records, args.l2), findings))
    return 0


def format_table(records, scores, findings) -> str:
    """Markdown: per source, top-1 hit_half axial / coronal / sagittal of each method, and their mean over sources."""
    lines = ["| source | scans | selector (leave-one-source-out) | selector any of top 3 | findings today | "
             "random slice |", "|---|---|---|---|---|---|"]
    rows = []
    for source in sorted({r.source for r in records if r.has_lesion}):
        mine = [r for r in records if r.source == source and r.has_lesion]
        row = [[statistics.mean(scores[r.name][p]["top1"] for r in mine) for p in PLANES],
               [statistics.mean(scores[r.name][p]["top3"] for r in mine) for p in PLANES],
               [statistics.mean(findings[r.name][p] for r in mine) for p in PLANES],
               [statistics.mean(r.random[p] for r in mine) for p in PLANES]]
        rows.append(row)
        lines.append(f"| {source} | {len(mine)} | " + " | ".join(_cells(v) for v in row) + " |")
    means = [[statistics.mean(row[m][i] for row in rows) for i in range(len(PLANES))] for m in range(4)]
    lines.append(f"| mean over {len(rows)} sources | | " + " | ".join(_cells(v) for v in means) + " |")
    return "\n".join(lines)


def format_claims(records, clean, l2: float) -> str:
    """Markdown: per lesion-free scan, the planes whose best candidate reaches the stood-out threshold of a
    model fitted without that scan (the threshold is fitted on the training scans, never on this one)."""
    lines = ["| lesion-free scan | best candidate's probability | stood-out threshold (fitted) | planes claiming |",
             "|---|---|---|---|"]
    claims = 0
    for record in clean:
        model = fit_records([r for r in records if r.name != record.name], l2)
        best = float(model.probabilities(record.descriptors).max()) if len(record.labels) else 0.0
        # The best candidate is one per scan, and each plane's top slice goes through it: all planes claim or none.
        claimed = len(PLANES) if best >= model.stands_out else 0
        claims += claimed
        lines.append(f"| {record.name} | {best:.2f} | {model.stands_out:.2f} | {claimed} of {len(PLANES)} |")
    total = len(PLANES) * len(clean)
    lines.append(f"| all | | | {claims} of {total} ({claims / max(total, 1):.0%}) |")
    return "\n".join(lines)


def _scan_name(path) -> str:
    """A scan's name for the tables: its case folder for a case's image.nii.gz, else its file name."""
    path = Path(path)
    return path.parent.name if path.name == "image.nii.gz" else path.name


def _cells(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


if __name__ == "__main__":
    sys.exit(main())
