"""``votemi eval``: voted, evenly spaced, random and middle slices with one model, by slice budget
(:mod:`VoteMILib.evaluate`)."""

from __future__ import annotations

import argparse
import os
import sys

from ..names import DEFAULT_TIMEOUT_S, INPROCESS, PLANES, parse_planes
from ..names import EVAL_BUDGETS as DEFAULT_BUDGETS
from ..names import EVAL_STRATEGIES as STRATEGIES
from .arguments import (add_backend_argument, add_cluster_arguments, add_key_arguments, add_mode_argument,
                        add_window_arguments, api_key, comma_separated, int_at_least, positive_int)

_budgets = comma_separated(int, 1, "'{}' is not a comma-separated list of whole numbers",
                           "'{}': budgets are whole numbers of at least 1")


def parse_budgets(text) -> tuple:
    """argparse type for --budgets: whole numbers of at least 1, in ascending order, each once."""
    return tuple(sorted(set(_budgets(text))))


def parse_strategies(text) -> tuple:
    """argparse type for --strategies: names of :data:`~VoteMILib.evaluate.STRATEGIES`, comma-separated, each once."""
    chosen = tuple(dict.fromkeys(item.strip().lower() for item in str(text).split(",") if item.strip()))
    unknown = [s for s in chosen if s not in STRATEGIES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown strategy {', '.join(unknown) or text!r}; choose from "
                                         f"{', '.join(STRATEGIES)}")
    return chosen


def add_eval_command(commands) -> None:
    parser = commands.add_parser(
        "eval", help="compare voted, evenly spaced, random and middle slices with one model, by slice budget",
        description="Ask a vision-language model about every case of DATASET with slices chosen four ways and "
                    "several slice budgets; score the answers and write OUT/results.csv, results.md, results.png "
                    "and answers.csv. Run it again to do only what is missing.")
    parser.add_argument("dataset", metavar="DATASET",
                        help="CSV: image, question, choices (separated by '|'), answer; or image, report "
                             "(paths relative to the CSV; optional case column)")
    parser.add_argument("--out", required=True, metavar="DIR", help="output folder (created; reused to resume)")
    group = parser.add_argument_group("model")
    group.add_argument("--server", default="", metavar="URL",
                       help="server URL (vLLM, llama.cpp, Ollama, votemi serve; default: votemi describe's)")
    add_backend_argument(group, "openai, ollama, or inprocess (run --model, a folder, on each worker)")
    group.add_argument("--model", default="", help="model name (default: the server's only model)")
    add_key_arguments(group)
    group.add_argument("--max-tokens", type=positive_int, default=None,
                       help="longest answer (default: 32 for questions, 512 for reports)")
    group.add_argument("--timeout", type=float, default=float(DEFAULT_TIMEOUT_S), metavar="S",
                       help=f"per answer (default: {DEFAULT_TIMEOUT_S})")
    group.add_argument("--device", default="auto", help="in-process model device (default: auto)")
    group.add_argument("--max-images", type=positive_int, metavar="N",
                       help="the most images the server takes in one request: larger budgets are left out "
                            "(default: what a probe of the server finds, see docs/servers.md)")
    group = parser.add_argument_group("evaluation")
    group.add_argument("--budgets", type=parse_budgets, default=DEFAULT_BUDGETS, metavar="N,M",
                       help=f"slice budgets (default: {','.join(map(str, DEFAULT_BUDGETS))})")
    group.add_argument("--strategies", type=parse_strategies, default=STRATEGIES, metavar="NAMES",
                       help=f"comma-separated, from {','.join(STRATEGIES)} (default: all)")
    group.add_argument("--planes", default=",".join(PLANES), type=parse_planes,
                       help="planes of the voted slices (default: %(default)s)")
    add_mode_argument(group)
    group.add_argument("--seed", type=int, default=0, help="seed of the selection, the random slices, the "
                                                           "model and the bootstrap (default: 0)")
    group.add_argument("--long-side", type=int_at_least(32), default=896, metavar="PX",
                       help="image size (default: 896)")
    group.add_argument("--prompt-file", metavar="FILE",
                       help="instruction template; placeholders {question}, {options} and those of votemi describe")
    group.add_argument("--scorer", metavar="COMMAND",
                       help="also score each answer with COMMAND: it reads the answer and the case's columns as "
                            "JSON on stdin and prints one number")
    group.add_argument("--bootstrap", type=positive_int, default=1000, metavar="N",
                       help="bootstrap resamples of the cases (default: 1000)")
    add_window_arguments(parser)
    add_cluster_arguments(parser, default_workers=1)
    parser.set_defaults(func=run_eval_command)


def run_eval_command(args) -> int:
    # The engine is imported when the command runs: `votemi --help` and the other commands never load Dask's runner.
    from .. import eval_scores
    from ..batch import (BatchError, dask_client, out_lock, prepare_out, require_dask, run_cases,
                         worker_memory_limit)
    from ..evaluate import (EvalSettings, eval_case, load_dataset, metrics_of, model_bytes, probed_image_limit,
                            store_answers, write_results)
    from ..run import window_settings

    require_dask()  # before any work or output: a broken Dask is one line
    kind, cases = load_dataset(args.dataset)
    out = prepare_out(args.out)
    limit = args.max_images
    if limit is None and args.backend != INPROCESS:
        limit, where = probed_image_limit(args.server, args.backend, args.model, api_key(args), args.timeout)
    else:
        where = f"--max-images {limit}"
    budgets = tuple(b for b in args.budgets if limit is None or b <= limit)
    dropped = [b for b in args.budgets if b not in budgets]
    if dropped:
        print(f"votemi eval: warning: budgets {', '.join(map(str, dropped))} exceed {where} and are left out",
              file=sys.stderr)
    if not budgets:
        raise BatchError(f"every budget exceeds {where}")
    template = ""
    if args.prompt_file:
        with open(args.prompt_file, encoding="utf-8") as handle:
            template = handle.read()
    modality, preset, window = window_settings(args)
    settings = EvalSettings(
        kind=kind, server_url=args.server, protocol=args.backend,
        model=os.path.abspath(args.model) if args.backend == INPROCESS else args.model, budgets=budgets,
        strategies=args.strategies, planes=tuple(args.planes), mode=args.mode, seed=args.seed,
        long_side=args.long_side, max_tokens=args.max_tokens or (32 if kind == "closed" else 512),
        timeout_s=args.timeout, device=args.device, modality=modality, ct_preset=preset,
        window=tuple(window) if window else None, template=template, scorer=args.scorer or "",
        api_key=api_key(args))
    if kind == "report":
        eval_scores.wordnet_folder()  # refuse at once, not after the first case, when METEOR cannot run
    memory = None if args.scheduler else worker_memory_limit(cases, args.workers, extra_bytes=model_bytes(settings))
    print(f"votemi eval: {len(cases)} cases ({kind}), budgets {','.join(map(str, budgets))}, strategies "
          f"{','.join(settings.strategies)} -> {out}", file=sys.stderr)
    with out_lock(out, "eval"), dask_client(args.workers, args.scheduler, memory) as client:
        records = run_cases(client, cases, eval_case, settings, out, store_answers, label="eval",
                            case_timeout=args.case_timeout)
    rows = write_results(out, records, settings, args.bootstrap)
    print(eval_scores.results_markdown(rows, metrics_of(settings), settings.budgets), end="")
    failed = [r for r in records if r.get("status") != "ok"]
    unanswered = sum(1 for r in records for item in r.get("answers", []) if item.get("error"))
    print(f"votemi eval: {len(records) - len(failed)} cases scored, {len(failed)} failed, {unanswered} answers "
          f"missing; results in {os.path.join(out, 'results.md')}", file=sys.stderr)
    return 1 if failed or unanswered else 0
