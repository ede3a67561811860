"""``votemi bench``: options and what each runs (:mod:`VoteMILib.bench` does the work and is imported only
when the command runs, so that building the command line loads neither numpy nor scipy)."""

from __future__ import annotations

from ..names import MODES, PLANES, SYNTHETIC_KINDS, parse_planes
from .arguments import comma_separated, parse_mode, positive_int

#: argparse type for --diameters: positive millimetres, comma-separated.
_diameters = comma_separated(float, 0, "'{}' is not a comma-separated list of millimetres",
                             "'{}': give one or more positive diameters in mm", strictly_above=True)


def add_bench_command(commands) -> None:
    parser = commands.add_parser("bench", help="score selection on cases with lesion masks or key images, and speed",
                                 description="Run selection on every case of a folder and score the top slice "
                                             "of each plane against the lesion mask, or against the key images "
                                             "of a DICOM Key Object Selection or of report texts, beside naive "
                                             "baselines.")
    parser.add_argument("data_dirs", nargs="*", metavar="DATA_DIR",
                        help="folders with a cases.tsv or case sub-folders (several are scored together)")
    parser.add_argument("--half", choices=("design", "check", "all"), default="all",
                        help="score the design or check half of the patient split only (docs/benchmark.md; "
                             "cases outside the split are left out), or every case (default)")
    parser.add_argument("--fov-check", action="store_true",
                        help="also cut each case with a mask on one side (part of the margin beside the lesion "
                             "removed, the lesion kept), perturb it (air padding, a hard cut, a one-sided field of "
                             "view, 1/3/5 mm slices, MRI rescaled and noisy) and report the share of top picks "
                             "that stay")
    parser.add_argument("--normal", action="store_true",
                        help="also run findings mode on lesion-free scans (Colin27 when installed, and a slab of "
                             "each case with a mask cut 30 mm or more from every mask voxel) and report the "
                             "share of planes that claim something stood out, per region and source")
    parser.add_argument("--leave-one-source-out", action="store_true",
                        help="instead, judge the fitted part of the selection, the generic selector (--selector): "
                             "each source (collection and acquisition) scored by a combiner refitted without it, "
                             "beside findings mode and a random slice, and Colin27 (when installed) judged for "
                             "planes claiming a finding by a combiner fitted without it")
    parser.add_argument("--planes", default=",".join(PLANES), type=parse_planes)
    parser.add_argument("--mode", type=parse_mode, default=None, metavar="{" + ",".join(MODES) + "}",
                        help="score one mode only (default: both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", action="store_true", help="vote with each case's extra sequences too")
    parser.add_argument("--encoder", metavar="MODEL", help="trained patch encoder to use")
    parser.add_argument("--json", metavar="OUT", help="write every number as JSON")
    parser.add_argument("--synthetic", nargs="?", const="all", choices=("all", *SYNTHETIC_KINDS),
                        metavar="KIND", help="put synthetic lesions into every case instead (its own lesion erased "
                                             "where it has a mask), one at a time, and score the findings picks: "
                                             "lung nodules, soft-tissue masses (CT), bright lesions (body MRI), "
                                             "lesions in enhanced organs (CT), small brain lesions (head MRI), or "
                                             "all")
    parser.add_argument("--keep-lesion", action="store_true",
                        help="with --synthetic: leave each case's own lesion in place")
    parser.add_argument("--diameters", type=_diameters, metavar="MM,...",
                        help="with --synthetic: lesion diameters in mm (default: per kind, see README)")
    parser.add_argument("--speed", action="store_true",
                        help="time 240x240x155 and 512x512x400 brain MRIs and a 512x512x130 chest CT made "
                             "from real scans instead, beside their targets")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per size with --speed")
    parser.add_argument("--source", help="scan to resample for the brain sizes of --speed "
                                         "(default: Colin27 from mricron-data)")
    parser.add_argument("--chest-source", help="CT to resample to 512x512x130 for --speed "
                                               "(default: ../shared/data/mirp_nsclc_lung1-001)")
    parser.set_defaults(func=run_bench)


def run_synthetic(args) -> dict:
    """``bench --synthetic``: every case whose region takes synthetic lesions of the kind (a case without
    a mask is a host as read, its own lesions unscored)."""
    from .. import synthetic
    from ..datasets import bench_cases

    kinds = SYNTHETIC_KINDS if args.synthetic == "all" else (args.synthetic,)
    diameters = {kind: args.diameters for kind in kinds} if args.diameters else None
    rows = []
    for case in bench_cases(args.data_dirs, "all"):
        rows += synthetic.evaluate_synthetic(case, kinds, args.seed, args.keep_lesion, diameters,
                                             progress=lambda line: print(line, flush=True))
    table = synthetic.summarise_synthetic(rows, args.planes)
    print(f"\nSynthetic lesions ({len(rows)}; hit_half of the top slice per plane, share of all three planes, "
          "share held by any of the 3 picks, share of picks that fell back to representative, share of "
          "picks that missed where the scan without the lesion is picked):")
    print(synthetic.format_synthetic_table(table, args.planes))
    baselines = synthetic.synthetic_baselines(rows, args.planes)
    print("\nThe same lesions: hit_half of the findings top pick beside the bench's baseline slices:")
    print(synthetic.format_synthetic_baselines(baselines))
    return {"synthetic": rows, "summary": table, "baselines": baselines, "settings": {"seed": args.seed, "keep_lesion": args.keep_lesion}}


def run_normal(cases, args) -> dict:
    """``bench --normal``: findings-mode claims on lesion-free scans, printed per case, region and source."""
    from .. import bench_normal

    rows = bench_normal.normal_rows(cases, args.planes, args.seed,
                                    progress=lambda line: print(line, flush=True))
    if not rows:
        print("\nNo lesion-free scan: Colin27 is not installed (apt-get install mricron-data) and no case "
              "has a slab 30 mm from its lesion.")
        return {"cases": rows, "by_region": {}, "by_source": {}}
    by_region = bench_normal.summarise_normal(rows, args.planes)
    by_source = bench_normal.summarise_normal(rows, args.planes, by="source")
    print("\nLesion-free scans (findings mode; 1 where a plane claims something stood out, the deciding cue):")
    print(bench_normal.format_normal_cases(rows, args.planes))
    print(f"\nShare of planes that claim something stood out on lesion-free scans ({len(rows)}), by region:")
    print(bench_normal.format_normal_table(by_region, args.planes))
    print("\nThe same by source:")
    print(bench_normal.format_normal_table(by_source, args.planes, label="source"))
    return {"cases": rows, "by_region": by_region, "by_source": by_source}


def run_leave_one_source_out(args) -> dict:
    """``bench --leave-one-source-out``: the generic selector refitted without each source, which it then scores."""
    import os

    from ..datasets import bench_cases
    from ..selector_bench import judge_selector
    from ..volumes import VolumeError

    if not args.data_dirs:
        raise VolumeError("bench --leave-one-source-out needs DATA_DIR")
    # Colin27 (Debian's mricron-data): lesion-free negatives in every fit, and judged by a fit without it.
    colin27 = [path for path in ("/usr/share/mricron/templates/ch2.nii.gz",) if os.path.isfile(path)]
    cases = bench_cases(args.data_dirs, args.half)
    judgement = judge_selector(cases, colin27, colin27, progress=lambda line: print(line, flush=True))
    print("\nGeneric selector, leave-one-source-out (top-1 hit_half axial / coronal / sagittal; each source "
          "scored by a combiner fitted without it):")
    print(judgement.table)
    if judgement.claims_rows:
        print("\nLesion-free scans (each judged by a combiner fitted without it):")
        print(judgement.claims)
    return {"leave_one_source_out": judgement.to_dict(),
            "settings": {"half": args.half, "data": list(args.data_dirs), "normal": colin27}}


def print_perturbations(rows, planes, mode) -> dict:
    """``bench --fov-check``: the perturbations (:mod:`VoteMILib.bench_perturb`) per case, then per half and
    region and per half and source; returns the two summaries."""
    from ..bench_perturb import format_perturbation_cases, format_perturbation_table, summarise_perturbations

    print(f"\nPerturbations ({mode}; top pick stable when within max(2 slices, 5 mm) of the pick on the whole "
          "scan, in RAS mm along the slice normal; shift in mm; hit_half of the pick on the perturbed scan):")
    print(format_perturbation_cases(rows, planes))
    by_region = summarise_perturbations(rows, planes, mode)
    by_source = summarise_perturbations(rows, planes, mode, by="source")
    print("\nPerturbations by half and region (share of stable top picks, their hit_half, and the whole scan's "
          "top-1 hit_half on the same cases):")
    print(format_perturbation_table(by_region, planes))
    print("\nThe same by source:")
    print(format_perturbation_table(by_source, planes, label="source"))
    return {"by_region": by_region, "by_source": by_source}


def check_key_image_sources(cases) -> None:
    """Read every case's key-image source before any selection runs: a bad KOS or CSV fails in a second."""
    from ..keyimages import read_source

    for case in cases:
        if case.key_images:
            read_source(case.key_images, case.name)


def report_key_images(rows, methods) -> dict:
    """Print the key-image scores (per case, then per method) and return them for the JSON."""
    from .. import keyimages

    table = keyimages.summarise(rows, methods)
    print(f"\nKey images as ground truth (the plane of acquisition; a hit is within max({keyimages.HIT_SLICES} "
          f"slices, {keyimages.HIT_MM:g} mm) of a key image):")
    print(keyimages.format_cases(rows, methods))
    print("\nHit rate of the top pick and of any of the top 3, median distance to the nearest key image:")
    print(keyimages.format_table(table))
    return table


def run_bench(args) -> int:
    from ..bench import (BASELINES, evaluate_case, format_case_table, format_fov_table, format_headline_table,
                         format_quality_table, format_speed_table, speed_benchmark, summarise)
    from ..datasets import bench_cases
    from ..volumes import VolumeError

    if args.json:  # before hours of work, not after
        from ..outputs import check_output_file

        check_output_file(args.json, "--json file")
    modes = (args.mode,) if args.mode else MODES
    if args.synthetic:
        if not args.data_dirs:
            raise VolumeError("bench --synthetic needs DATA_DIR")
        document = run_synthetic(args)
    elif args.leave_one_source_out:
        document = run_leave_one_source_out(args)
    elif args.speed:
        rows = speed_benchmark(args.repeats, args.source, modes, args.chest_source)
        print(format_speed_table(rows))
        document = {"speed": rows}
    else:
        if not args.data_dirs:
            raise VolumeError("bench needs DATA_DIR (or --speed)")
        cases = bench_cases(args.data_dirs, args.half)
        if not cases:
            raise VolumeError(f"no case of {', '.join(args.data_dirs)} is in the {args.half} half of the split")
        check_key_image_sources(cases)
        encoder = None
        if args.encoder:
            from ..encoders import load_patch_encoder

            encoder = load_patch_encoder(args.encoder)
        perturb = None
        if args.fov_check:
            from ..bench_perturb import perturbation_rows as perturb
        rows = []
        for case in cases:
            row = evaluate_case(case, args.planes, modes, args.seed, args.extra, encoder, args.fov_check, perturb)
            rows.append(row)
            cut = f", cut {row['fov']['cut']}" if "fov" in row else ""
            print(f"{case.name} ({row['half']}): load {row['load_s']:.2f} s, select {row['select_s']:.2f} s, "
                  f"peak {row['peak_mb']:.0f} MB{cut}", flush=True)
        methods = (*modes, *BASELINES)
        means = summarise(rows, args.planes, methods)
        by_source = summarise(rows, args.planes, methods, by="source")
        scored = [r for r in rows if r["planes"]]
        print(f"\nPer case (top slice of each plane: hit_any/hit_half, distance from largest lesion section; "
              f"the cue that decided the {modes[0]} pick in brackets, and whether any of its top 3 holds half "
              "the largest section):")
        print(format_case_table(scored, args.planes, methods))
        if args.fov_check:
            print(f"\nField-of-view cut ({modes[0]}; top pick stable when within max(2 slices, 5 mm) of the pick "
                  "on the whole scan; shift in mm; hit_half of the pick on the cut scan):")
            print(format_fov_table(scored, args.planes))
            perturbations = print_perturbations(scored, args.planes, modes[0])
        print(f"\nMeans over the cases with masks, by half and region ({len(scored)} cases; region as scanned, "
              "body = every region but the head; hit_any / hit_half / distance):")
        print(format_quality_table(means))
        print(f"\nThe same by source (collection and acquisition; {len(scored)} cases):")
        print(format_quality_table(by_source))
        headline = (f"\nHeadline ({modes[0]}: hit_half of the top pick, of any of the top 3"
                    + (", share of top picks stable under the field-of-view cut" if args.fov_check else "")
                    + "; top-1 hit_half of each baseline)")
        print(headline + ", by region:")
        print(format_headline_table(means, args.planes, modes[0]))
        print(headline + ", by source:")
        print(format_headline_table(by_source, args.planes, modes[0], label="source"))
        document = {"cases": rows, "means": means, "means_by_source": by_source,
                    "settings": {"modes": list(modes), "seed": args.seed, "extra": args.extra,
                                 "encoder": args.encoder, "half": args.half, "fov_check": args.fov_check,
                                 "normal": args.normal, "data": list(args.data_dirs)}}
        if args.fov_check:
            document["perturbations"] = perturbations
        if any(row.get("key_images") for row in rows):
            document["key_images"] = report_key_images(rows, (*modes, "random", "middle"))
        if args.normal:
            document["normal"] = run_normal(cases, args)
    if args.json:
        from ..outputs import write_json_atomic

        write_json_atomic(args.json, document, what="bench JSON")
    return 0
