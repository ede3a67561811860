"""``votemi train-selector``: fit the experimental generic selector on folders of scans with lesion masks."""

from __future__ import annotations

import os


def add_train_selector_command(commands) -> None:
    """Register ``train-selector`` on an ``argparse`` sub-parser collection."""
    parser = commands.add_parser(
        "train-selector", help="fit the experimental generic selector (--selector) on scans with lesion masks",
        description="Fit the generic selector's logistic combiner on every case with a lesion mask in DATA "
                    "(cases.tsv or case sub-folders; a candidate is a positive when half its ball lies in the "
                    "mask and the slices through its centre hold half the lesion's largest section), on each "
                    "case's lesion-free slab (the thickest one 30 mm or more from every mask voxel, all "
                    "negatives) and on lesion-free scans given with --normal, and write it as a .npz file for "
                    "'votemi select --selector'.")
    parser.add_argument("folders", nargs="+", metavar="DATA", help="folder of cases with masks (repeatable)")
    parser.add_argument("--out", required=True, metavar="MODEL.npz", help="model file to write (.npz)")
    parser.add_argument("--normal", action="append", default=[], metavar="IMAGE",
                        help="a lesion-free scan whose candidates are all negatives (repeatable), e.g. "
                             "/usr/share/mricron/templates/ch2.nii.gz")
    parser.add_argument("--l2", type=_non_negative, default=1.0, metavar="L",
                        help="L2 penalty on the standardised weights (default: 1)")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run_train_selector)


def _non_negative(text) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"'{text}' must be 0 or more")
    return value


def run_train_selector(args) -> int:
    """Fit and write the model; errors surface as one-line ``ValueError``s."""
    from ..outputs import check_output_file
    from ..selector_training import train_selector

    if os.path.isdir(args.out) or not args.out.lower().endswith(".npz"):
        raise ValueError(f"--out {args.out}: give the model file to write, ending in .npz")
    check_output_file(args.out, "--out model file")
    train_selector(args.folders, args.out, normals=args.normal, l2=args.l2,
                   log=None if args.quiet else (lambda message: print(message, flush=True)))
    return 0
