"""The ``votemi bench`` command: options and what each runs (``VoteMILib.bench`` does the work and is
imported only when the command runs, so that building the command line loads neither numpy nor scipy)."""

from __future__ import annotations

import argparse

from .names import MODES, PLANES, SYNTHETIC_KINDS, parse_planes


def add_bench_command(commands) -> None:
    from .cli import parse_mode, positive_int

    parser = commands.add_parser("bench", help="score selection on cases with lesion masks, and speed",
                                 description="Run selection on every case of a folder and score the top slice "
                                             "of each plane against the lesion mask, beside naive baselines.")
    parser.add_argument("data_dir", nargs="?", help="folder with cases.tsv or case sub-folders")
    parser.add_argument("--planes", default=",".join(PLANES), type=parse_planes)
    parser.add_argument("--mode", type=parse_mode, default=None, metavar="{" + ",".join(MODES) + "}",
                        help="score one mode only (default: both)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--extra", action="store_true", help="vote with each case's extra sequences too")
    parser.add_argument("--encoder", metavar="MODEL", help="trained patch encoder to use")
    parser.add_argument("--json", metavar="OUT", help="write every number as JSON")
    parser.add_argument("--synthetic", nargs="?", const="all", choices=("all", *SYNTHETIC_KINDS),
                        metavar="KIND", help="put synthetic lesions into every body case with a mask instead (its own "
                                             "lesion erased), one at a time, and score the findings picks: lung "
                                             "nodules, soft-tissue masses (CT), bright lesions (MRI), or all")
    parser.add_argument("--keep-lesion", action="store_true",
                        help="with --synthetic: leave each case's own lesion in place")
    parser.add_argument("--diameters", type=_diameters, metavar="MM,...",
                        help="with --synthetic: lesion diameters in mm (default: per kind, see README)")
    parser.add_argument("--speed", action="store_true",
                        help="time 240x240x155 and 512x512x400 volumes made from a real scan instead")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per size with --speed")
    parser.add_argument("--source", help="scan to resample for --speed (default: Colin27 from mricron-data)")
    parser.set_defaults(func=run_bench)


def _diameters(text) -> tuple:
    """argparse type for --diameters: positive millimetres, comma-separated."""
    try:
        values = tuple(float(item) for item in text.split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of millimetres") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"'{text}': give one or more positive diameters in mm")
    return values


def run_synthetic(args) -> dict:
    """``bench --synthetic``: every case with a mask whose region takes synthetic lesions of the kind."""
    from . import synthetic
    from .bench import find_cases

    kinds = SYNTHETIC_KINDS if args.synthetic == "all" else (args.synthetic,)
    diameters = {kind: args.diameters for kind in kinds} if args.diameters else None
    rows = []
    for case in find_cases(args.data_dir):
        if case.mask:
            rows += synthetic.evaluate_synthetic(case, kinds, args.seed, args.keep_lesion, diameters,
                                                 progress=lambda line: print(line, flush=True))
    table = synthetic.summarise_synthetic(rows, args.planes)
    print(f"\nSynthetic lesions ({len(rows)}; hit_half of the top slice per plane, share of all three planes, "
          "share held by any of the 3 picks, share of picks that fell back to representative, share of "
          "picks that missed where the scan without the lesion is picked):")
    print(synthetic.format_synthetic_table(table, args.planes))
    return {"synthetic": rows, "summary": table, "settings": {"seed": args.seed, "keep_lesion": args.keep_lesion}}


def run_bench(args) -> int:
    from .bench import (BASELINES, evaluate_case, find_cases, format_case_table, format_quality_table,
                        format_speed_table, speed_benchmark, summarise)
    from .volumes import VolumeError

    if args.json:  # before hours of work, not after
        from .outputs import check_output_file

        check_output_file(args.json, "--json file")
    modes = (args.mode,) if args.mode else MODES
    if args.synthetic:
        if not args.data_dir:
            raise VolumeError("bench --synthetic needs DATA_DIR")
        document = run_synthetic(args)
    elif args.speed:
        rows = speed_benchmark(args.repeats, args.source, modes)
        print(format_speed_table(rows))
        document = {"speed": rows}
    else:
        if not args.data_dir:
            raise VolumeError("bench needs DATA_DIR (or --speed)")
        encoder = None
        if args.encoder:
            from .encoders import load_patch_encoder

            encoder = load_patch_encoder(args.encoder)
        rows = []
        for case in find_cases(args.data_dir):
            row = evaluate_case(case, args.planes, modes, args.seed, args.extra, encoder)
            rows.append(row)
            print(f"{case.name}: load {row['load_s']:.2f} s, select {row['select_s']:.2f} s, "
                  f"peak {row['peak_mb']:.0f} MB", flush=True)
        methods = (*modes, *BASELINES)
        means = summarise(rows, args.planes, methods)
        print("\nPer case (top slice of each plane: hit_any/hit_half, distance from largest lesion section; "
              "the cue that decided the first mode's pick in brackets):")
        print(format_case_table([r for r in rows if r["planes"]], args.planes, methods))
        print(f"\nMeans over the cases with masks, by detected region ({sum(1 for r in rows if r['planes'])} cases; "
              "hit_any / hit_half / distance):")
        print(format_quality_table(means))
        document = {"cases": rows, "means": means, "settings": {"modes": list(modes), "seed": args.seed,
                                                                "extra": args.extra, "encoder": args.encoder}}
    if args.json:
        from .outputs import write_json_atomic

        write_json_atomic(args.json, document, what="bench JSON")
    return 0
