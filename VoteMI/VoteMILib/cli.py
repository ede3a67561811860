"""The ``votemi`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__, events
from .names import CT_PRESET_NAMES, PLANES, canonical_mode, parse_planes


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with events.session(getattr(args, "events", False)) as state:
        state.exit_code = _run(args)
    return state.exit_code


def _run(args) -> int:
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError) as error:  # VolumeError and OutputError are among them
        events.print_error(error)
        return 1
    except KeyboardInterrupt:
        print("votemi: interrupted", file=sys.stderr)
        return 130


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command line (sub-commands inherit this)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def int_at_least(minimum: int):
    """argparse type: a whole number of at least ``minimum``, with a one-line message otherwise."""
    def parse(text) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"
    return parse


#: argparse type: an integer of at least 1.
positive_int = int_at_least(1)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="votemi",
        description="Pick representative slices of a 3D scan with Vote-MI and describe them with a local VLM.")
    parser.add_argument("--version", action="version", version=f"votemi {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    add_select_command(commands)
    from .bench_command import add_bench_command

    add_bench_command(commands)
    from .batch import add_batch_command

    add_batch_command(commands)
    from .evaluate import add_eval_command

    add_eval_command(commands)
    # Commands defined beside the parts they drive are registered here (VLM: describe, serve).
    from .encoder_commands import add_train_encoder_command

    add_train_encoder_command(commands)
    from .vlm.commands import add_describe_command, add_models_command, add_serve_command

    add_describe_command(commands)
    add_models_command(commands)
    add_serve_command(commands)
    return parser


def add_selection_arguments(parser) -> None:
    """Options shared by every command that runs a selection."""
    parser.add_argument("image", help="3D image: NIfTI, NRRD, MHA/MHD, or a folder of DICOM files")
    parser.add_argument("--series", metavar="UID",
                        help="DICOM series to read when IMAGE is a folder holding several (default: the one with "
                             "most slices; the others are listed)")
    parser.add_argument("--planes", default=",".join(PLANES), type=parse_planes,
                        help="comma-separated planes (default: %(default)s)")
    parser.add_argument("--top", type=positive_int, default=3, metavar="K", help="slices per plane (default: 3)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_mode_argument(parser)
    parser.add_argument("--extra", action="append", default=[], metavar="IMAGE",
                        help="another sequence of the same patient to vote with (repeatable)")
    parser.add_argument("--encoder", metavar="MODEL",
                        help="trained patch encoder (.npz from 'votemi train-encoder'); default: PCA")
    parser.add_argument("--json", metavar="OUT.json", help="write the selection as JSON")
    parser.add_argument("--png-dir", metavar="DIR", help="write each selected slice as a PNG")
    add_guide_arguments(parser)
    add_window_arguments(parser)
    add_events_argument(parser)


def add_guide_arguments(parser) -> None:
    """What the user already knows: a segmentation or points (guided selection, :mod:`VoteMILib.guided`)."""
    group = parser.add_argument_group(
        "guide", "show what you segmented or marked: each plane's picks are the largest sections of each segment "
                 "(or the slices through each point); with --mode as well, the best unsupervised pick outside "
                 "them follows")
    group.add_argument("--mask", metavar="LABELMAP",
                       help="label map (NIfTI, NRRD, ...; another grid is resampled nearest-neighbour) or DICOM "
                            "RTSTRUCT; label > 0 is a segment")
    group.add_argument("--labels", type=parse_labels, metavar="N,M", help="labels of --mask to show, in this order "
                                                                          "(default: all, the biggest first)")
    group.add_argument("--label-name", action="append", default=[], type=parse_label_name, metavar="N=NAME",
                       help="name of label N in the report prompt (default 'label N'; repeatable)")
    group.add_argument("--point", action="append", default=[], type=parse_point, metavar="R,A,S",
                       help="a point on the lesion in RAS mm (Slicer's coordinates); repeatable; write "
                            "--point=R,A,S when R is negative")


def parse_labels(text) -> tuple:
    """argparse type for --labels: whole numbers above 0, comma-separated."""
    try:
        labels = tuple(int(item) for item in str(text).split(",") if item.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of whole numbers") from None
    if not labels or min(labels) < 1:
        raise argparse.ArgumentTypeError(f"'{text}': labels are whole numbers above 0 (0 is the background)")
    return labels


def parse_label_name(text) -> tuple:
    """argparse type for --label-name: ``N=NAME``."""
    number, separator, name = str(text).partition("=")
    try:
        value = int(number)
    except ValueError:
        value = 0
    if not separator or value < 1 or not name.strip():
        raise argparse.ArgumentTypeError(f"'{text}' is not N=NAME with a label N above 0")
    return value, name.strip()


def parse_point(text) -> tuple:
    """argparse type for --point: three numbers R,A,S (mm)."""
    try:
        point = tuple(float(item) for item in str(text).split(","))
    except ValueError:
        point = ()
    if len(point) != 3 or not all(abs(c) < float("inf") for c in point):
        raise argparse.ArgumentTypeError(f"'{text}' is not a point R,A,S (three numbers in mm, e.g. 12.5,-30,41)")
    return point


def add_window_arguments(parser) -> None:
    """How slices become pixels (PNGs of select, images of describe)."""
    group = parser.add_argument_group("windows")
    group.add_argument("--modality", choices=("auto", "CT", "MRI"), default="auto",
                       help="auto detects CT from Hounsfield units (default: %(default)s)")
    group.add_argument("--ct-preset", choices=(*CT_PRESET_NAMES, "none"), default=None,
                       help="CT window: auto fits the detected region (head: brain, chest: lung, body: soft_tissue); "
                            "three_window = RGB of three windows; none = percentiles (default: auto, or none "
                            "with --window)")
    group.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"), help="intensity window of IMAGE")


def window_settings(args) -> tuple:
    """(modality, ct_preset or None, window or None) from :func:`add_window_arguments` options;
    an explicit --window without --ct-preset windows CT too."""
    preset = args.ct_preset or ("none" if args.window else "auto")
    return args.modality, None if preset == "none" else preset, tuple(args.window) if args.window else None


def add_events_argument(parser) -> None:
    parser.add_argument("--events", action="store_true",
                        help="write progress, results and errors to stdout as JSON lines (see the README)")


def parse_mode(text) -> str:
    """argparse type for --mode: a mode or one of its earlier names."""
    try:
        return canonical_mode(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_mode_argument(parser) -> None:
    parser.add_argument("--mode", type=parse_mode, default=None, metavar="{findings,representative}",
                        help="findings: votes for the slices where something stands out (default); "
                             "representative: the paper's Vote-MI, typical anatomy (earlier names: votemi, plain); "
                             "with --mask or --point: add the best pick of this mode outside the guided structures")


def add_select_command(commands) -> None:
    parser = commands.add_parser("select", help="score every slice and pick the representative ones",
                                 description="Score every slice of each plane with Vote-MI and pick the top K.")
    add_selection_arguments(parser)
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run_select)


def check_outputs(args, **more_files) -> None:
    """Before any work, refuse output paths that cannot be written or would overwrite an input.

    Checks ``--json`` and ``--png-dir`` of ``args`` and the files of ``more_files`` (option name ->
    path or None); raises :class:`~VoteMILib.outputs.OutputError` naming the path.
    """
    from .outputs import OutputError, check_output_file, check_output_folder

    files = {"--json": getattr(args, "json", None), **more_files}
    inputs = [args.image, *getattr(args, "extra", []), getattr(args, "encoder", None),
              getattr(args, "prompt_file", None), getattr(args, "mask", None)]
    inputs = {os.path.realpath(path) for path in inputs if path}
    written = {}
    for option, path in files.items():
        if not path:
            continue
        checked = check_output_file(path, f"{option} file")
        real = os.path.realpath(checked)
        if real in inputs:
            raise OutputError(f"{option} {path} is an input of this command; choose another file name")
        if real in written:
            raise OutputError(f"{option} and {written[real]} both name {path}; choose two files")
        written[real] = option
    if getattr(args, "png_dir", None):
        check_output_folder(args.png_dir, "--png-dir folder")


def print_warnings(*volumes) -> None:
    """What the readers found worth telling (DICOM series chosen, uneven slices), one line each."""
    for volume in volumes:
        for warning in volume.metadata.get("warnings", []):
            print(f"votemi: warning: {warning}", file=sys.stderr)


def selection_document(args, volume, result) -> dict:
    """The selection JSON of ``votemi select`` (also the start of ``votemi describe``'s)."""
    document = result.to_dict(image=os.path.abspath(args.image))
    if "dicom_series" in volume.metadata:
        document["dicom_series"] = volume.metadata["dicom_series"]
    return document


def run_selection(args, progress=None):
    """Load the image (and extras), run the selection; returns (volume, extras, result)."""
    from .selection import select_slices
    from .volumes import load_volume

    started = time.perf_counter()
    volume = load_volume(args.image, series=args.series)
    extras = [load_volume(path) for path in args.extra]
    loaded = time.perf_counter() - started
    print_warnings(volume, *extras)
    encoder = load_encoder(args.encoder) if args.encoder else None
    progress = progress or events.progress_callback()
    guide = load_guide(args, volume)
    if guide is None:
        result = select_slices(volume, planes=args.planes, top_k=args.top, seed=args.seed,
                               mode=args.mode or "findings", extra_volumes=extras, encoder=encoder, progress=progress)
    else:
        from .guided import select_guided

        result = select_guided(volume, guide, planes=args.planes, top_k=args.top, mode=args.mode, seed=args.seed,
                               extra_volumes=extras, encoder=encoder, progress=progress)
    result.timing_s = {"load": loaded, **result.timing_s}
    return volume, extras, result


def load_guide(args, volume):
    """The :class:`~VoteMILib.guided.Guide` of --mask/--labels/--label-name/--point, or None without them."""
    mask, points = getattr(args, "mask", None), getattr(args, "point", [])
    if not mask:
        if getattr(args, "labels", None) or getattr(args, "label_name", []):
            raise ValueError("--labels and --label-name choose segments of --mask; give --mask LABELMAP")
        if not points:
            return None
    from .dicom_guides import rtstruct_names
    from .guided import load_label_map, make_guide

    labels_kji = load_label_map(mask, volume) if mask else None
    names = rtstruct_names(mask) if mask else {}
    names.update(dict(getattr(args, "label_name", [])))
    return make_guide(volume, labels_kji, labels=getattr(args, "labels", None), points=points, names=names,
                      source=os.path.basename(os.path.normpath(mask)) if mask else "")


def load_encoder(path):
    from .encoders import load_patch_encoder

    return load_patch_encoder(path)


def run_select(args) -> int:
    check_outputs(args)
    volume, _, result = run_selection(args)
    document = selection_document(args, volume, result)
    write_outputs(args, volume, result, document, quiet=args.quiet)
    events.emit("selection", selection=document)
    return 0


def write_outputs(args, volume, result, document: dict, quiet: bool = False) -> None:
    """Print the summary and write the JSON and PNGs the user asked for."""
    if not quiet:
        print(format_summary(volume, result))
    if args.png_dir:
        from .render import choose_windowing, save_selection_pngs

        modality, preset, window = window_settings(args)
        windowing = choose_windowing(volume, modality, preset, window, region=result.region.get("name"))
        paths = save_selection_pngs(volume, result, args.png_dir, windowing)
        document["windowing"] = windowing.to_dict()
        document["pngs"] = [os.path.abspath(p) for p in paths]
        if not quiet:
            print(f"wrote {len(paths)} PNGs to {args.png_dir}")
    if args.json:
        from .outputs import write_json_atomic

        write_json_atomic(args.json, document, what="selection JSON")
        if not quiet:
            print(f"wrote {args.json}")


def format_summary(volume, result) -> str:
    """A readable table of the picks."""
    size = "x".join(str(n) for n in result.size_ijk)
    spacing = "x".join(f"{s:.2f}" for s in result.spacing_mm)
    settings = result.settings
    clusters = f", {settings['clusters']} clusters" if "clusters" in settings else ""
    region = result.region or {}
    seen = f"; {region.get('modality', '?')} {region.get('name', '?')}" if region else ""
    voting = f", seed {settings['seed']}, {settings['patches']} patches{clusters}" if "patches" in settings else ""
    lines = [f"{volume.name}: {size} voxels, {spacing} mm{seen}; mode {result.selection_mode()}{voting}",
             f"{'id':<4}{'plane':<10}{'slice':>6}{'position (RAS mm)':>20}{'score':>8}  cue"]
    for plane, plane_result in result.planes.items():
        for chosen in plane_result.selected:
            where = f"{plane_result.normal_axis} {chosen.position_mm:+8.1f}"
            cue = plane_result.cue if chosen.guide is None else _guide_text(chosen.guide)
            lines.append(f"{chosen.label:<4}{plane:<10}{chosen.index:>6}{where:>20}{chosen.score:>8.3f}  {cue}")
    timing = ", ".join(f"{key} {value:.2f} s" for key, value in result.timing_s.items())
    lines.append(f"time: {timing}")
    return "\n".join(lines)


def _guide_text(guide: dict) -> str:
    """The cue column of a guided pick: ``segmentation: liver``, ``point: point 1 (12.0,-3.5,40.0)``."""
    if guide.get("kind") == "point":
        return f"point: {guide.get('name', '')} ({','.join(f'{c:g}' for c in guide.get('ras', []))})"
    if guide.get("kind") == "unsupervised":
        return f"{guide.get('cue', '')} (outside the guided structures)"
    return f"{guide.get('kind', '')}: {guide.get('name', '')}"


if __name__ == "__main__":
    sys.exit(main())
