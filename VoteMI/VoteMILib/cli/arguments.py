"""What the commands share: argument types, the option groups several commands take, the API key and the
one-line failure.

Building these options imports neither numpy nor scipy: ``votemi --help`` stays quick.
"""

from __future__ import annotations

import argparse
import os

from .. import events
from ..names import BACKENDS, CT_PRESET_NAMES, DEFAULT_BACKEND, PLANES, backends_help, canonical_mode, parse_planes
from ..request import SelectionRequest

API_KEY_ENV = "VOTEMI_API_KEY"


class Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command line (sub-commands inherit this)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def fail(message: str, code: int = 1) -> int:
    """Print ``message`` as the command's one-line error (an event with ``--events``); returns ``code``."""
    events.print_error(message)
    return code


# ---------------------------------------------------------------------------------------------
# Argument types


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


def positive_seconds(text) -> float:
    """argparse type for a time limit: a finite number of seconds above 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number of seconds") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"'{text}': give a number of seconds above 0")
    return value


def comma_separated(convert, minimum, not_a_list: str, too_small: str, strictly_above: bool = False):
    """argparse type: one or more values separated by commas, each read by ``convert``, none below
    ``minimum`` (none at or below it with ``strictly_above``).

    ``not_a_list`` and ``too_small`` are the one-line messages, ``{}`` standing for the text given.
    """
    def parse(text) -> tuple:
        try:
            values = tuple(convert(item) for item in str(text).split(",") if item.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(not_a_list.format(text)) from None
        if not values or (min(values) <= minimum if strictly_above else min(values) < minimum):
            raise argparse.ArgumentTypeError(too_small.format(text))
        return values

    return parse


#: argparse type for --labels: whole numbers above 0, comma-separated.
parse_labels = comma_separated(int, 1, "'{}' is not a comma-separated list of whole numbers",
                               "'{}': labels are whole numbers above 0 (0 is the background)")


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


def parse_mode(text) -> str:
    """argparse type for --mode: a mode or one of its earlier names."""
    try:
        return canonical_mode(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


# ---------------------------------------------------------------------------------------------
# Options of several commands


def add_selection_arguments(parser) -> None:
    """Options shared by every command that runs a selection."""
    parser.add_argument("image", help="3D image: NIfTI, NRRD, MHA/MHD, or a folder of DICOM files")
    parser.add_argument("--series", metavar="UID",
                        help="DICOM series to read when IMAGE is a folder holding several (default: the one with "
                             "most slices; the others are listed)")
    add_pick_arguments(parser)
    parser.add_argument("--extra", action="append", default=[], metavar="IMAGE",
                        help="another sequence of the same patient to vote with (repeatable)")
    parser.add_argument("--volume-name", action="append", default=[], metavar="NAME", dest="volume_names",
                        help="the name reports and prompts give IMAGE, then each --extra in order (repeatable; "
                             "default: their file names)")
    parser.add_argument("--encoder", metavar="MODEL",
                        help="trained patch encoder (.npz from 'votemi train-encoder'); default: PCA")
    parser.add_argument("--selector", metavar="MODEL.npz",
                        help="experimental: pick by the generic selector's candidates, fitted by "
                             "'votemi train-selector' (the shipped one: VoteMI/Resources/selector_model.npz)")
    parser.add_argument("--json", metavar="OUT.json", help="write the selection as JSON")
    parser.add_argument("--png-dir", metavar="DIR", help="write each selected slice as a PNG")
    add_guide_arguments(parser)
    add_window_arguments(parser)
    add_events_argument(parser)


def selection_request(args) -> SelectionRequest:
    """The :class:`~VoteMILib.request.SelectionRequest` of a command line parsed with
    :func:`add_selection_arguments`: the one place the options become the engine's arguments."""
    return SelectionRequest(
        image=args.image, series=args.series, extras=tuple(args.extra), volume_names=tuple(args.volume_names),
        planes=tuple(args.planes), slices_per_plane=args.slices_per_plane, seed=args.seed, mode=args.mode,
        encoder=args.encoder, selector=args.selector, mask=args.mask, labels=args.labels,
        label_names=tuple(args.label_name), points=tuple(args.point), modality=args.modality,
        ct_preset=args.ct_preset, window=tuple(args.window) if args.window else None)


def add_pick_arguments(parser) -> None:
    """--planes, --slices-per-plane, --seed and --mode: which slices a selection picks (``select``, ``describe``,
    ``batch``)."""
    parser.add_argument("--planes", default=",".join(PLANES), type=parse_planes,
                        help="comma-separated planes (default: %(default)s)")
    add_slices_per_plane_argument(parser)
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    add_mode_argument(parser)


def add_slices_per_plane_argument(parser) -> None:
    """``--slices-per-plane``: voted slices per plane (``args.slices_per_plane``)."""
    parser.add_argument("--slices-per-plane", dest="slices_per_plane", type=positive_int, default=3, metavar="N",
                        help="slices per plane (default: %(default)s)")


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


def add_events_argument(parser) -> None:
    parser.add_argument("--events", action="store_true",
                        help="write progress, results and errors to stdout as JSON lines (see the README)")


def add_mode_argument(parser) -> None:
    parser.add_argument("--mode", type=parse_mode, default=None, metavar="{findings,representative}",
                        help="findings: votes for the slices where something stands out (default); "
                             "representative: the paper's Vote-MI, typical anatomy (earlier names: votemi, plain); "
                             "with --mask or --point: add the best pick of this mode outside the guided structures")


def add_key_arguments(parser) -> None:
    """--api-key or --api-key-env (the commands that talk to a model server, and ``serve`` itself)."""
    keys = parser.add_mutually_exclusive_group()
    keys.add_argument("--api-key", default="", help="API key (visible in the process list; prefer --api-key-env)")
    keys.add_argument("--api-key-env", metavar="VAR", default=API_KEY_ENV,
                      help="environment variable holding the API key (default: %(default)s)")


def add_backend_argument(parser, backends=BACKENDS, note: str = "") -> None:
    """``--backend`` among ``backends``, each said what it is from the registry (``note`` adds to that)."""
    what = backends_help(backends) + (f"; {note}" if note else "")
    parser.add_argument("--backend", choices=backends, default=DEFAULT_BACKEND,
                        help=f"{what} (default: %(default)s)")


def api_key(args) -> str:
    """--api-key, else the variable named by --api-key-env (default VOTEMI_API_KEY)."""
    if args.api_key:
        return args.api_key
    return os.environ.get(args.api_key_env or API_KEY_ENV, "")


def add_cluster_arguments(parser, default_workers: int = 2) -> None:
    """--workers and --scheduler (``votemi batch`` and ``votemi eval``)."""
    group = parser.add_argument_group("cluster", "a local Dask cluster of worker processes, or an existing one")
    where = group.add_mutually_exclusive_group()
    where.add_argument("--workers", type=positive_int, default=default_workers, metavar="N",
                       help="worker processes of the local cluster (default: %(default)s)")
    where.add_argument("--scheduler", metavar="ADDRESS",
                       help="use the Dask cluster of this scheduler (e.g. tcp://10.0.0.5:8786) instead; its "
                            "workers must have votemi installed and read the inputs at the same paths")
    group.add_argument("--case-timeout", type=positive_seconds, metavar="SECONDS",
                       help="record a case still running after SECONDS as failed and go on (default: no limit)")
