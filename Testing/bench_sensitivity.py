"""How much the body cues' picks depend on their anatomical scales.

Each scale of :mod:`VoteMILib.body_cues` (and the region thresholds the cues rely on) is set to 70 % and
130 % of its value in turn, and findings mode is scored on the body cases of ``../shared/data``
(hit_half of the top slice per plane, as ``votemi bench``). Thresholds on a 0..1 map stop at 1.

    python Testing/bench_sensitivity.py [data_dir] [--factors 0.7,1.3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "VoteMI"))

from VoteMILib import body_cues, regions  # noqa: E402
from VoteMILib.bench import find_cases, load_mask, score_slice, section_areas  # noqa: E402
from VoteMILib.geometry import PLANES, plane_geometry  # noqa: E402
from VoteMILib.preprocess import make_working_grid  # noqa: E402
from VoteMILib.regions import detect_modality, detect_region  # noqa: E402
from VoteMILib.selection import select_slices  # noqa: E402
from VoteMILib.volumes import load_volume  # noqa: E402

#: (module, name, upper bound): the scales varied.
SCALES = (
    (body_cues, "BODY_RIM_MM", None),
    (body_cues, "NODULE_RADII_MM", None),
    (body_cues, "NODULE_CONTRAST_HU", None),
    (body_cues, "NODULE_STRENGTH", 1.0),
    (body_cues, "MIRROR_MM", None),
    (body_cues, "BULK_MM", None),
    (body_cues, "LUNG_NODULE_MIN", 1.0),
    (body_cues, "BLOB_RADII_MM", None),
    (body_cues, "MIN_CONTRAST_HU", None),
    (body_cues, "MIN_CONTRAST_MRI", None),
    (regions, "CHEST_WALL_MM", None),
    (regions, "CHEST_LUNG_FRACTION", None),
)


def scaled(value, factor: float, upper):
    if isinstance(value, tuple):
        return tuple(scaled(v, factor, upper) for v in value)
    value = value * factor
    return min(value, upper) if upper is not None else value


def body_cases(data_dir):
    """The cases with masks that selection does not take for a head, loaded once."""
    loaded = []
    for case in find_cases(data_dir):
        if not case.mask:
            continue
        volume = load_volume(case.image)
        if detect_region(make_working_grid(volume), detect_modality(volume)).name == "head":
            continue
        lesion_kji = load_mask(case.mask, volume)
        profiles = {}
        for plane in PLANES:
            positions = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).positions_mm
            profiles[plane] = (section_areas(volume, lesion_kji, plane), positions)
        loaded.append((case.name, volume, profiles))
    return loaded


def hit_half(cases) -> dict:
    """Per case and plane: 1 when the top findings slice holds half of the largest lesion section; the cue too."""
    out = {}
    for name, volume, profiles in cases:
        result = select_slices(volume, top_k=1, mode="findings")
        out[name] = {plane: (score_slice(result.planes[plane].selected[0].index, *profiles[plane])["hit_half"],
                             result.planes[plane].cue) for plane in PLANES}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--factors", default="0.7,1.3")
    args = parser.parse_args(argv)
    factors = [float(f) for f in args.factors.split(",")]

    started = time.perf_counter()
    cases = body_cases(args.data_dir)
    names = [name for name, _, _ in cases]
    print(f"{len(cases)} body cases: {', '.join(names)}")
    reference = hit_half(cases)
    header = "| scale | value | " + " | ".join(f"{p} hit_half" for p in PLANES) + " | hit_half or cue changed |"
    print(header)
    print("|" + "---|" * (len(PLANES) + 3))

    def row(label, value, scores):
        means = [np.mean([scores[n][p][0] for n in names]) for p in PLANES]
        changed = [f"{n} {p} ({scores[n][p][1]})" for n in names for p in PLANES if scores[n][p] != reference[n][p]]
        print(f"| {label} | {value} | " + " | ".join(f"{m:.2f}" for m in means)
              + f" | {', '.join(changed) or 'none'} |", flush=True)

    row("(as shipped)", "", reference)
    for module, name, upper in SCALES:
        original = getattr(module, name)
        try:
            for factor in factors:
                value = scaled(original, factor, upper)
                setattr(module, name, value)
                shown = (", ".join(f"{v:g}" for v in np.round(value, 2)) if isinstance(value, tuple)
                         else f"{value:.4g}")
                row(f"{name} x{factor:g}", shown, hit_half(cases))
        finally:
            setattr(module, name, original)
    print(f"{time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
