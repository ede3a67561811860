"""The generic selector (``--selector``) judged leave-one-source-out: ``votemi bench --leave-one-source-out``.

Each source (collection and acquisition, :func:`~VoteMILib.bench_sources.source_of`) is scored by a combiner
refitted without it, beside today's default selection (findings mode) and a random slice; lesion-free scans are
judged by a combiner fitted without them, with the stood-out threshold fitted on its own training scans. Nothing
held out is seen by the fit that scores it.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field

from .bench import score_slice
from .bench_sources import source_of
from .datasets import load_mask
from .geometry import PLANES
from .selection import select_slices
from .selector_training import NORMAL_SOURCE, fit_records, leave_one_source_out, scan_record, slab_record
from .volumes import load_volume


@dataclass
class SelectorJudgement:
    """What :func:`judge_selector` measured; ``table`` and ``claims`` are the printed Markdown."""

    records: list
    scores: dict
    findings: dict
    claims_rows: list = field(default_factory=list)
    table: str = ""
    claims: str = ""
    seconds: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"by_case": {name: {"source": next(r.source for r in self.records if r.name == name),
                                   "selector": self.scores[name], "findings": self.findings[name]}
                            for name in self.scores},
                "by_source": source_means(self.records, self.scores, self.findings),
                "lesion_free": self.claims_rows,
                "seconds": {"median": statistics.median(self.seconds) if self.seconds else None,
                            "max": max(self.seconds) if self.seconds else None}}


def judge_selector(cases, normal_scans=(), lesion_free_scans=(), l2: float = 1.0, progress=None,
                   slabs: bool = True) -> SelectorJudgement:
    """Leave-one-source-out scores of the generic selector on ``cases`` (those with a lesion mask).

    Parameters
    ----------
    cases : list of BenchCase
        From :func:`~VoteMILib.datasets.bench_cases`; cases without a mask are skipped.
    normal_scans : sequence of str
        Lesion-free scans whose candidates are negatives in every fit (never scored).
    lesion_free_scans : sequence of str
        Lesion-free scans judged for planes claiming a finding, each by a fit without it.
    l2 : float
        Ridge penalty of the logistic combiner.
    progress : callable(str), optional
        Receives one line per scan.
    slabs : bool
        Add each case's lesion-free slab as negatives (:func:`~VoteMILib.selector_training.slab_record`);
        a slab keeps its case's source, so it is left out with it.
    """
    say = progress or (lambda line: None)
    records, findings, seconds = [], {}, []
    for case in cases:
        if not case.mask:
            continue
        started = time.perf_counter()
        volume = load_volume(case.image)
        mask = load_mask(case.mask, volume)
        record = scan_record(case.name, volume, mask, source_of(case.name, case.source))
        default = select_slices(volume, top_k=1)  # today's default selection, on the same scan
        findings[case.name] = {plane: score_slice(default.planes[plane].selected[0].index,
                                                  record.lesion_areas[plane], record.positions[plane])["hit_half"]
                               for plane in PLANES}
        records.append(record)
        seconds.append(record.seconds)
        slab = slab_record(case.name, volume, mask, record.source) if slabs else None
        if slab is not None:
            records.append(slab)
        say(f"{case.name}: {record.source}, {len(record.labels)} candidates"
            f"{f', slab {len(slab.labels)}' if slab is not None else ''}, {time.perf_counter() - started:.2f} s")
    for path in normal_scans:
        records.append(scan_record(scan_name(path), load_volume(path), None, NORMAL_SOURCE))
    if not any(record.has_lesion for record in records):
        raise ValueError("--leave-one-source-out needs cases with lesion masks")
    scores = leave_one_source_out(records, l2)
    clean = [scan_record(scan_name(path), load_volume(path), None, NORMAL_SOURCE) for path in lesion_free_scans]
    seconds += [record.seconds for record in clean]
    judgement = SelectorJudgement(records, scores, findings, seconds=seconds)
    judgement.table = format_table(records, scores, findings)
    judgement.claims_rows = lesion_free_claims(records, clean, l2)
    judgement.claims = format_claims(judgement.claims_rows)
    return judgement


def source_means(records, scores, findings) -> dict:
    """Source -> mean top-1 and any-of-top-3 hit_half of the selector, findings mode and a random slice, per plane."""
    means = {}
    for source in sorted({r.source for r in records if r.has_lesion}):
        mine = [r for r in records if r.source == source and r.has_lesion]
        means[source] = {
            "scans": len(mine),
            "selector_top1": [statistics.mean(scores[r.name][p]["top1"] for r in mine) for p in PLANES],
            "selector_top3": [statistics.mean(scores[r.name][p]["top3"] for r in mine) for p in PLANES],
            "findings_top1": [statistics.mean(findings[r.name][p] for r in mine) for p in PLANES],
            "random_top1": [statistics.mean(r.random[p] for r in mine) for p in PLANES]}
    return means


def format_table(records, scores, findings) -> str:
    """Markdown: per source, top-1 hit_half axial / coronal / sagittal of each method, and their mean over sources."""
    columns = ("selector_top1", "selector_top3", "findings_top1", "random_top1")
    lines = ["| source | scans | selector (leave-one-source-out) | selector any of top 3 | findings today | "
             "random slice |", "|---|---|---|---|---|---|"]
    means = source_means(records, scores, findings)
    for source, row in means.items():
        lines.append(f"| {source} | {row['scans']} | " + " | ".join(_cells(row[c]) for c in columns) + " |")
    overall = [[statistics.mean(row[c][i] for row in means.values()) for i in range(len(PLANES))] for c in columns]
    lines.append(f"| mean over {len(means)} sources | | " + " | ".join(_cells(v) for v in overall) + " |")
    return "\n".join(lines)


def lesion_free_claims(records, clean, l2: float) -> list:
    """Per lesion-free scan: its best candidate's probability under a model fitted without it, that model's
    stood-out threshold (fitted on its training scans, never on this one) and the planes that claim a finding."""
    rows = []
    for record in clean:
        model = fit_records([r for r in records if r.name != record.name], l2)
        best = float(model.probabilities(record.descriptors).max()) if len(record.labels) else 0.0
        # The best candidate is one per scan and each plane's top slice goes through it: all planes claim or none.
        rows.append({"scan": record.name, "best": best, "threshold": float(model.stands_out),
                     "planes_claiming": len(PLANES) if best >= model.stands_out else 0})
    return rows


def format_claims(rows) -> str:
    """Markdown of :func:`lesion_free_claims`, with the share of all planes that claim."""
    lines = ["| lesion-free scan | best candidate's probability | stood-out threshold (fitted) | planes claiming |",
             "|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['scan']} | {row['best']:.2f} | {row['threshold']:.2f} | "
                     f"{row['planes_claiming']} of {len(PLANES)} |")
    claims, total = sum(row["planes_claiming"] for row in rows), len(PLANES) * len(rows)
    lines.append(f"| all | | | {claims} of {total} ({claims / max(total, 1):.0%}) |")
    return "\n".join(lines)


def scan_name(path) -> str:
    """A scan's name for the tables: its case folder for a case's ``image.*``, else its file name."""
    folder, name = os.path.split(os.fspath(path))
    return os.path.basename(folder) if name.startswith("image.") else name


def _cells(values) -> str:
    return " / ".join(f"{v:.2f}" for v in values)
