"""One selection run as the commands make it (``votemi select``, ``describe`` and each case of ``batch``):
outputs checked before any work, the image and its extras loaded, the selection (guided by a mask or
points when given), its JSON document, PNGs and the readable summary.

Each function takes a :class:`~VoteMILib.request.SelectionRequest`, so that the command line, the batch runner
and a script run the same selection.
"""

from __future__ import annotations

import os
import sys
import time

from . import events
from .request import SelectionRequest
from .results import outcome_text


def check_outputs(request: SelectionRequest, files: dict, png_dir: str | None = None, more_inputs=()) -> None:
    """Before any work, refuse output paths that cannot be written or would overwrite an input.

    Parameters
    ----------
    request : SelectionRequest
        Its image, extras, encoder and mask are the inputs no output may overwrite.
    files : dict
        Option name (``--json``, ...) -> output file path or None, in the order errors name them.
    png_dir : str or None
        The folder of ``--png-dir``.
    more_inputs : sequence of str
        Other input files of the command (a prompt file).

    Raises
    ------
    VoteMILib.outputs.OutputError
        Naming the path.
    """
    from .outputs import OutputError, check_output_file, check_output_folder

    inputs = [request.image, *request.extras, request.encoder, *more_inputs, request.mask]
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
    if png_dir:
        check_output_folder(png_dir, "--png-dir folder")


def print_warnings(*volumes) -> None:
    """What the readers found worth telling (DICOM series chosen, uneven slices), one line each."""
    for volume in volumes:
        for warning in volume.metadata.get("warnings", []):
            print(f"votemi: warning: {warning}", file=sys.stderr)


def selection_document(request: SelectionRequest, volume, result) -> dict:
    """The selection JSON of ``votemi select`` (also the start of ``votemi describe``'s)."""
    document = result.to_dict(image=os.path.abspath(request.image))
    if "dicom_series" in volume.metadata:
        document["dicom_series"] = volume.metadata["dicom_series"]
    return document


def run_selection(request: SelectionRequest, progress=None):
    """Load the image (and extras) of ``request`` and run its selection.

    Parameters
    ----------
    request : SelectionRequest
    progress : callable or None
        ``progress(fraction, message)``; None reports to the ``--events`` stream when one is active.

    Returns
    -------
    tuple
        (volume, extras, result): the loaded image, the loaded extras and the
        :class:`~VoteMILib.results.SelectionResult`.
    """
    from .selection import select_slices
    from .volumes import load_volume

    started = time.perf_counter()
    names = volume_names(request)
    volume = load_volume(request.image, series=request.series, name=names[0])
    extras = [load_volume(path, name=name) for path, name in zip(request.extras, names[1:])]
    loaded = time.perf_counter() - started
    print_warnings(volume, *extras)
    encoder = load_encoder(request.encoder) if request.encoder else None
    progress = progress or events.progress_callback()
    guide = load_guide(request, volume)
    selector = load_selector_option(request, guide)
    if guide is None:
        result = select_slices(volume, planes=request.planes, top_k=request.slices_per_plane, seed=request.seed,
                               mode=request.mode or "findings", extra_volumes=extras, encoder=encoder,
                               progress=progress, selector=selector)
    else:
        from .guided import select_guided

        result = select_guided(volume, guide, planes=request.planes, top_k=request.slices_per_plane,
                               mode=request.mode, seed=request.seed, extra_volumes=extras, encoder=encoder,
                               progress=progress)
    result.timing_s = {"load": loaded, **result.timing_s}
    return volume, extras, result


def volume_names(request: SelectionRequest) -> list:
    """The names of ``--volume-name`` for the image and each extra, in order; None where none was given.

    Slicer's panel writes its volumes to ASCII file names and sends the nodes' names this way: ITK opens files
    through the system's narrow-character API, which on Windows cannot spell every name a node may have.
    """
    given, count = list(request.volume_names or []), 1 + len(request.extras)
    if len(given) > count:
        raise ValueError(f"{len(given)} --volume-name given for {count} volume(s) (the image and each --extra)")
    if any(not str(name).strip() for name in given):
        raise ValueError("--volume-name: a name cannot be empty")
    return [str(name) for name in given] + [None] * (count - len(given))


def load_guide(request: SelectionRequest, volume):
    """The :class:`~VoteMILib.guided.Guide` of the request's mask, labels, label names and points, or None
    without a mask or points."""
    mask, points = request.mask, list(request.points)
    if not mask:
        if request.labels or request.label_names:
            raise ValueError("--labels and --label-name choose segments of --mask; give --mask LABELMAP")
        if not points:
            return None
    from .dicom_guides import rtstruct_names
    from .guided import load_label_map, make_guide

    labels_kji = load_label_map(mask, volume) if mask else None
    names = rtstruct_names(mask) if mask else {}
    names.update(dict(request.label_names))
    return make_guide(volume, labels_kji, labels=request.labels, points=points, names=names,
                      source=os.path.basename(os.path.normpath(mask)) if mask else "")


def load_selector_option(request: SelectionRequest, guide):
    """The model of ``--selector`` (experimental generic selector), or None without it."""
    if not request.selector:
        return None
    if guide is not None:
        raise ValueError("--selector picks slices without a guide; leave out --mask and --point, or --selector")
    from .selector_model import load_selector

    return load_selector(request.selector)


def load_encoder(path):
    """The trained patch encoder of ``--encoder``."""
    from .encoders import load_patch_encoder

    return load_patch_encoder(path)


def save_pngs(request: SelectionRequest, volume, result, folder, document: dict) -> list:
    """Write each selected slice as a PNG into ``folder``, windowed as the options say; records the
    windowing in ``document`` and returns the paths."""
    from .render import choose_windowing, save_selection_pngs

    modality, preset, window = request.windowing()
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
