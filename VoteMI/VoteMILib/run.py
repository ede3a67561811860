"""One selection run as the commands make it (``votemi select``, ``describe`` and each case of ``batch``):
outputs checked before any work, the image and its extras loaded, the selection (guided by a mask or
points when given), its JSON document, PNGs and the readable summary.

``args`` is the parsed command line of ``votemi select`` (an ``argparse.Namespace``, or any object with
its attributes: ``image``, ``series``, ``extra``, ``encoder``, ``planes``, ``top``, ``seed``, ``mode``,
``mask``, ``labels``, ``label_name``, ``point``, ``modality``, ``ct_preset``, ``window``, ``json``,
``png_dir``), so that the command line, the batch runner and a script run the same selection.
"""

from __future__ import annotations

import os
import sys
import time

from . import events
from .results import outcome_text


def window_settings(args) -> tuple:
    """(modality, ct_preset or None, window or None) of the --modality, --ct-preset and --window options;
    an explicit --window without --ct-preset windows CT too."""
    preset = args.ct_preset or ("none" if args.window else "auto")
    return args.modality, None if preset == "none" else preset, tuple(args.window) if args.window else None


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
    names = volume_names(args)
    volume = load_volume(args.image, series=args.series, name=names[0])
    extras = [load_volume(path, name=name) for path, name in zip(args.extra, names[1:])]
    loaded = time.perf_counter() - started
    print_warnings(volume, *extras)
    encoder = load_encoder(args.encoder) if args.encoder else None
    progress = progress or events.progress_callback()
    guide = load_guide(args, volume)
    selector = load_selector_option(args, guide)
    if guide is None:
        result = select_slices(volume, planes=args.planes, top_k=args.top, seed=args.seed,
                               mode=args.mode or "findings", extra_volumes=extras, encoder=encoder, progress=progress,
                               selector=selector)
    else:
        from .guided import select_guided

        result = select_guided(volume, guide, planes=args.planes, top_k=args.top, mode=args.mode, seed=args.seed,
                               extra_volumes=extras, encoder=encoder, progress=progress)
    result.timing_s = {"load": loaded, **result.timing_s}
    return volume, extras, result


def volume_names(args) -> list:
    """The names of ``--volume-name`` for the image and each extra, in order; None where none was given.

    Slicer's panel writes its volumes to ASCII file names and sends the nodes' names this way: ITK opens files
    through the system's narrow-character API, which on Windows cannot spell every name a node may have.
    """
    given, count = list(getattr(args, "volume_names", None) or []), 1 + len(args.extra)
    if len(given) > count:
        raise ValueError(f"{len(given)} --volume-name given for {count} volume(s) (the image and each --extra)")
    if any(not str(name).strip() for name in given):
        raise ValueError("--volume-name: a name cannot be empty")
    return [str(name) for name in given] + [None] * (count - len(given))


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


def load_selector_option(args, guide):
    """The model of ``--selector`` (experimental generic selector), or None without it."""
    path = getattr(args, "selector", None)
    if not path:
        return None
    if guide is not None:
        raise ValueError("--selector picks slices without a guide; leave out --mask and --point, or --selector")
    from .selector_model import load_selector

    return load_selector(path)


def load_encoder(path):
    from .encoders import load_patch_encoder

    return load_patch_encoder(path)


def save_pngs(args, volume, result, folder, document: dict) -> list:
    """Write each selected slice as a PNG into ``folder``, windowed as the options say; records the
    windowing in ``document`` and returns the paths."""
    from .render import choose_windowing, save_selection_pngs

    modality, preset, window = window_settings(args)
    windowing = choose_windowing(volume, modality, preset, window, region=result.region.get("name"))
    paths = save_selection_pngs(volume, result, folder, windowing)
    document["windowing"] = windowing.to_dict()
    return paths


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
    lines += _outcome_lines(result)
    timing = ", ".join(f"{key} {value:.2f} s" for key, value in result.timing_s.items())
    lines.append(f"time: {timing}")
    return "\n".join(lines)


def _outcome_lines(result) -> list:
    """One line a plane on whether anything stood out, with the confidence (``sagittal: representative (nothing
    stood out), confidence 0.04``); none for a guided selection, whose picks show what the user chose."""
    if result.settings.get("guided_by"):
        return []
    return [f"{plane}: {outcome_text(plane_result.outcome())}" for plane, plane_result in result.planes.items()]


def _guide_text(guide: dict) -> str:
    """The cue column of a guided pick: ``segmentation: liver``, ``point: point 1 (12.0,-3.5,40.0)``."""
    if guide.get("kind") == "point":
        return f"point: {guide.get('name', '')} ({','.join(f'{c:g}' for c in guide.get('ras', []))})"
    if guide.get("kind") == "unsupervised":
        return f"{guide.get('cue', '')} (outside the guided structures)"
    return f"{guide.get('kind', '')}: {guide.get('name', '')}"
