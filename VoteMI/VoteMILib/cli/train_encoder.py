"""``votemi train-encoder``: train a patch VAE on a folder of scans, without labels."""

from __future__ import annotations

import os

from .arguments import comma_separated, int_at_least, positive_int

#: argparse type for --hidden: layer widths of at least 1.
_widths = comma_separated(int, 1, "'{}' is not a comma-separated list of widths, e.g. 128,64",
                          "'{}' is not a list of positive widths, e.g. 128,64")


def add_train_encoder_command(commands) -> None:
    """Register ``train-encoder`` on an ``argparse`` sub-parser collection."""
    # Defaults are repeated from training.py rather than imported, so that building the parser never
    # imports the training module; test_encoder checks that they agree.
    parser = commands.add_parser(
        "train-encoder", help="train a patch VAE on a folder of scans (needs torch)",
        description="Train the patch VAE of Vote-MI without labels on every image of FOLDER (a cases folder's "
                    "images and extra sequences, or every NIfTI/NRRD/MHA file; masks and other label maps are "
                    "never used) and write the encoder as a numpy .npz file for --encoder.")
    parser.add_argument("folder", metavar="FOLDER", help="folder with cases.tsv, case sub-folders, or scan files")
    parser.add_argument("--out", required=True, metavar="MODEL", help="model file to write (.npz)")
    parser.add_argument("--epochs", type=positive_int, default=20, metavar="N", help="training epochs (default: 20)")
    parser.add_argument("--latent", type=positive_int, default=10, metavar="D",
                        help="latent dimension (default: 10, as in the paper)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--hidden", type=_widths, default=(128, 64), metavar="W1,W2",
                        help="hidden widths of the encoder MLP (default: 128,64)")
    parser.add_argument("--batch-size", type=positive_int, default=256, metavar="B", help="default: 256")
    parser.add_argument("--learning-rate", type=float, default=1e-3, metavar="LR", help="Adam step (default: 0.001)")
    parser.add_argument("--patches-per-scan", type=int_at_least(0), default=20000, metavar="N",
                        help="random patches drawn from larger scans; 0 = all (default: 20000)")
    parser.add_argument("--threads", type=positive_int, default=1, metavar="T",
                        help="torch CPU threads (default: 1); results repeat for a given count")
    parser.add_argument("--quiet", action="store_true", help="print nothing but errors")
    parser.set_defaults(func=run_train_encoder)


def run_train_encoder(args) -> int:
    """Run training for parsed arguments; errors surface as one-line ``ValueError``s."""
    from ..training import train_encoder

    if os.path.isdir(args.out):
        raise ValueError(f"--out {args.out} is a folder; give the model file to write, e.g. {args.out}/encoder.npz")
    if not args.out.lower().endswith(".npz"):
        raise ValueError(f"--out {args.out}: the model file name must end in .npz")
    from ..outputs import check_output_file

    check_output_file(args.out, "--out model file")
    train_encoder(args.folder, args.out, epochs=args.epochs, latent=args.latent, seed=args.seed, hidden=args.hidden,
                  batch_size=args.batch_size, learning_rate=args.learning_rate,
                  patches_per_scan=args.patches_per_scan or None, threads=args.threads,
                  log=(lambda message: None) if args.quiet else (lambda message: print(message, flush=True)))
    return 0
