"""``votemi batch``: ``votemi select`` on many scans on a Dask cluster, resumable (:mod:`VoteMILib.batch`)."""

from __future__ import annotations

import os
import sys

from .arguments import add_cluster_arguments, add_pick_arguments, add_window_arguments


def add_batch_command(commands) -> None:
    parser = commands.add_parser(
        "batch", help="select slices of many scans on a Dask cluster, resumable",
        description="Run 'votemi select' on every case of the inputs, in parallel on Dask. Each case gets "
                    "OUT/cases/<case>.json (the JSON of 'votemi select --json'); OUT/summary.jsonl and "
                    "OUT/summary.csv list every case. Run it again to do only what is missing or changed.")
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="folder of cases (cases.tsv, DICOM series, image.* or loose images; searched "
                             "recursively), case table (.csv/.tsv with an 'image' column) or image file")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    add_pick_arguments(parser)
    parser.add_argument("--encoder", metavar="MODEL", help="trained patch encoder (.npz); default: PCA")
    parser.add_argument("--pngs", action="store_true", help="also write each selected slice as a PNG "
                                                            "(OUT/png/<case>/)")
    add_window_arguments(parser)
    add_cluster_arguments(parser)
    parser.set_defaults(func=run_batch_command)


def run_batch_command(args) -> int:
    # The engine is imported when the command runs: `votemi --help` and the other commands never load it.
    from ..batch import (SUMMARY_CSV, SelectSettings, dask_client, file_digest, out_lock, prepare_out, require_dask,
                         run_cases, select_case, store_selection, worker_memory_limit, write_summary_csv)
    from ..datasets import discover_cases
    from ..request import window_settings

    require_dask()  # before any work or output: a broken Dask is one line
    cases = discover_cases(args.inputs)
    out = prepare_out(args.out)
    modality, preset, window = window_settings(args.modality, args.ct_preset, args.window)
    settings = SelectSettings(planes=tuple(args.planes), slices_per_plane=args.slices_per_plane, seed=args.seed, mode=args.mode,
                              encoder=os.path.abspath(args.encoder) if args.encoder else None, pngs=args.pngs,
                              modality=modality, ct_preset=args.ct_preset, window=tuple(window) if window else None,
                              encoder_digest=file_digest(args.encoder) if args.encoder else "")
    with out_lock(out, "batch"):  # before anything is said or started: a second run stops in one line
        limit = None if args.scheduler else worker_memory_limit(cases, args.workers)
        print(f"votemi batch: {len(cases)} cases -> {out}" +
              (f" on {args.scheduler}" if args.scheduler else
               f" on {args.workers} local workers ({limit / 2 ** 30:.1f} GiB each)"), file=sys.stderr)
        with dask_client(args.workers, args.scheduler, limit) as client:
            records = run_cases(client, cases, select_case, settings, out, store_selection(out),
                                case_timeout=args.case_timeout)
    write_summary_csv(os.path.join(out, SUMMARY_CSV), records)
    failed = [r for r in records if r.get("status") != "ok"]
    print(f"votemi batch: {len(records) - len(failed)} cases done, {len(failed)} failed; summary in "
          f"{os.path.join(out, SUMMARY_CSV)}", file=sys.stderr)
    return 1 if failed else 0
