"""Guided selection on every masked case: hit_half of each plane's top pick (as ``votemi bench`` scores it) when the
case's own mask guides, and the time of each step (read the mask, check the guide, pick; region detection as
``votemi select --mask`` adds it).

    python Testing/bench_guided.py [data_dir ...]      (default: ../shared/data and ../shared/data/sarcoma)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VoteMI"))

from VoteMILib.bench import score_slice, section_areas  # noqa: E402
from VoteMILib.datasets import find_cases, load_mask  # noqa: E402
from VoteMILib.geometry import PLANES  # noqa: E402
from VoteMILib.guided import guided_selection, load_label_map, make_guide  # noqa: E402
from VoteMILib.preprocess import make_working_grid  # noqa: E402
from VoteMILib.regions import detect_modality, detect_region  # noqa: E402
from VoteMILib.volumes import load_volume  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data = REPO.parent / "shared" / "data"
    parser.add_argument("folders", nargs="*", default=[str(data), str(data / "sarcoma")])
    args = parser.parse_args(argv)
    cases = [case for folder in args.folders for case in find_cases(folder) if case.mask]
    print(f"{'case':<24}{'axial':>6}{'coronal':>8}{'sagittal':>9}{'mask s':>8}{'guide s':>8}{'pick s':>8}"
          f"{'region s':>9}")
    hits, steps = {plane: [] for plane in PLANES}, {"mask": [], "guide": [], "pick": [], "region": []}
    for case in cases:
        volume = load_volume(case.image)
        timed = {}
        started = time.perf_counter()
        labels = load_label_map(case.mask, volume)
        timed["mask"] = time.perf_counter() - started
        started = time.perf_counter()
        guide = make_guide(volume, labels, source="mask")
        timed["guide"] = time.perf_counter() - started
        started = time.perf_counter()
        result = guided_selection(volume, guide, top_k=3)
        timed["pick"] = time.perf_counter() - started
        started = time.perf_counter()
        detect_region(make_working_grid(volume), detect_modality(volume))
        timed["region"] = time.perf_counter() - started
        lesion = load_mask(case.mask, volume)
        row = []
        for plane in PLANES:
            chosen = result.planes[plane]
            hit = score_slice(chosen.selected[0].index, section_areas(volume, lesion, plane), chosen.positions_mm)
            hits[plane].append(hit["hit_half"])
            row.append(hit["hit_half"])
        for step, seconds in timed.items():
            steps[step].append(seconds)
        print(f"{case.name:<24}{row[0]:>6.2f}{row[1]:>8.2f}{row[2]:>9.2f}" +
              "".join(f"{timed[step]:>{8 if step != 'region' else 9}.3f}" for step in steps))
    print(f"{'mean hit_half':<24}" + "".join(f"{statistics.mean(hits[p]):>{w}.2f}" for p, w in zip(PLANES, (6, 8, 9)))
          + f"   ({len(cases)} cases)")
    print("median s: " + ", ".join(f"{step} {statistics.median(values):.3f} (max {max(values):.3f})"
                                   for step, values in steps.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
