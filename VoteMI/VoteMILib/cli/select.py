"""``votemi select``: score every slice and pick the representative ones."""

from __future__ import annotations

import os

from .. import events
from ..run import check_outputs, format_summary, run_selection, save_pngs, selection_document
from .arguments import add_selection_arguments, selection_request


def add_select_command(commands) -> None:
    parser = commands.add_parser("select", help="score every slice and pick the representative ones",
                                 description="Score every slice of each plane with Vote-MI and pick the top K.")
    add_selection_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run_select)


def run_select(args) -> int:
    request = selection_request(args)
    check_outputs(request, {"--json": args.json}, png_dir=args.png_dir)
    volume, _, result = run_selection(request)
    document = selection_document(request, volume, result)
    write_outputs(args, request, volume, result, document, quiet=args.quiet)
    events.emit(events.SELECTION, selection=document)
    return 0


def write_outputs(args, request, volume, result, document: dict, quiet: bool = False) -> None:
    """Print the summary and write the JSON and PNGs the user asked for."""
    if not quiet:
        print(format_summary(volume, result))
    if args.png_dir:
        paths = save_pngs(request, volume, result, args.png_dir, document)
        document["pngs"] = [os.path.abspath(p) for p in paths]
        if not quiet:
            print(f"wrote {len(paths)} PNGs to {args.png_dir}")
    if args.json:
        from ..outputs import write_json_atomic

        write_json_atomic(args.json, document, what="selection JSON")
        if not quiet:
            print(f"wrote {args.json}")
