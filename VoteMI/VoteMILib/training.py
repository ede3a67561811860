"""Training a patch VAE without labels, as in the Vote-MI paper (needs torch).

Patches are cut exactly as selection cuts them (working grid, every plane, ``PATCH_SIZE`` pixels,
intensities scaled to the scan's foreground), so the encoder sees at training time what it will see
at selection time. Only images are read: lesion masks and other label maps are never used.

The decoder's Gaussian likelihood uses the optimal noise level of each batch (the reconstruction
RMSE, as in the "sigma-VAE" of Rybkin et al. 2021) instead of a hand-set weight between
reconstruction and KL terms: one parameter fewer, and it adapts to how well the patches can be
reconstructed. The trained encoder is exported to the numpy format of :mod:`VoteMILib.encoders`
and checked there against torch's own output before the file is written.

torch is imported inside the functions so that the rest of the engine never needs it.
"""

from __future__ import annotations

import datetime
import os
import time
from dataclasses import dataclass, field

import numpy as np

from .encoders import ACTIVATIONS, VAEEncoder, save_model
from .features import PATCH_SIZE, extract_patches
from .geometry import PLANES
from .preprocess import TARGET_SPACING_MM, make_working_grid
from .volumes import VolumeError, load_volume

#: Defaults: about a minute on 2 CPU cores for the six shared cases (~110k patches).
LATENT_DIM = 10
HIDDEN = (128, 64)
#: ReLU: in numpy inference, tanh or ELU cost several times more than the matrix products.
ACTIVATION = "relu"
EPOCHS = 20
BATCH_SIZE = 256
LEARNING_RATE = 1e-3
#: torch CPU threads: one makes results independent of the machine's core count, and this small
#: model gains little from more (two threads on two busy cores ran 10x slower than one here).
THREADS = 1
#: Upper bound of patches drawn from one scan, so that no single scan dominates training.
PATCHES_PER_SCAN = 20000
#: Fraction of patches held out to report a validation loss.
VALIDATION_FRACTION = 0.05
#: Floor of the per-batch noise level, in foreground-scaled intensity units.
MIN_SIGMA = 1e-3
#: Largest |numpy - torch| latent difference accepted when exporting.
EXPORT_TOLERANCE = 1e-4

_VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz")
#: A scan with at most this many distinct integer values is a label map, not an image.
_MAX_LABELS = 32


class TrainingError(ValueError):
    """Training cannot run or its result is unusable; the message is one line for the user."""


@dataclass
class TrainingResult:
    """What :func:`train_encoder` produced.

    Attributes
    ----------
    path : str
        The model file written.
    metadata : dict
        The metadata record stored in it.
    model : torch.nn.ModuleDict
        The trained network (``body``, ``mean``, ``log_var``, ``decoder``), for checks and reuse.
    history : list of dict
        Per-epoch losses.
    """

    path: str
    metadata: dict
    model: object
    history: list = field(default_factory=list)


def find_training_scans(folder) -> list:
    """Image files to train on: a cases folder's images and extra sequences, or every volume file.

    A folder with ``cases.tsv`` or case sub-folders (see :func:`VoteMILib.datasets.find_cases`) gives
    each case's image and extra sequences, never its mask. Any other folder is searched recursively
    for files SimpleITK reads (NIfTI, NRRD, MHA/MHD, MGZ); label maps are dropped when loaded.
    """
    from .datasets import find_cases

    folder = os.fspath(folder)
    if not os.path.isdir(folder):
        raise VolumeError(f"no such folder: {folder}")
    try:
        cases = find_cases(folder)
    except VolumeError:
        cases = []
    if cases:
        return [path for case in cases for path in [case.image, *case.extras]]
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [os.path.join(root, name) for name in sorted(files) if name.lower().endswith(_VOLUME_SUFFIXES)]
    if not found:
        raise VolumeError(f"{folder} holds no scans (no cases.tsv, no case sub-folders, no NIfTI/NRRD/MHA files)")
    return found


def looks_like_label_map(array: np.ndarray) -> bool:
    """True for segmentations: few distinct values, all integers (checked on a sparse sample)."""
    sample = np.asarray(array).ravel()[:: max(1, array.size // 200000)]
    if not np.all(sample == np.round(sample)):
        return False
    return len(np.unique(sample)) <= _MAX_LABELS


def collect_patches(paths, patches_per_scan: int | None = PATCHES_PER_SCAN, seed: int = 0, log=print):
    """Patches of every plane of every scan, as selection cuts them.

    Returns
    -------
    pixels : ndarray, shape (n, p * p), float32
    used : list of str
        The scans that contributed.
    """
    rng = np.random.default_rng(seed)
    chunks, used = [], []
    for path in paths:
        volume = load_volume(path)
        if looks_like_label_map(volume.array):
            log(f"  skipped {path}: looks like a label map, not an image")
            continue
        grid = make_working_grid(volume)
        pixels = extract_patches(grid.data, grid.mask, PLANES, PATCH_SIZE).pixels
        if patches_per_scan and len(pixels) > patches_per_scan:
            pixels = pixels[np.sort(rng.choice(len(pixels), patches_per_scan, replace=False))]
        log(f"  {path}: {len(pixels)} patches")
        if len(pixels):
            chunks.append(pixels.reshape(len(pixels), -1))
            used.append(path)
    if not chunks:
        raise TrainingError("no patches to train on: every scan was skipped or had no foreground")
    return np.concatenate(chunks).astype(np.float32), used


def build_model(inputs: int, hidden=HIDDEN, latent: int = LATENT_DIM, activation: str = ACTIVATION):
    """The patch VAE: an MLP encoder with mean and log-variance heads, and a mirrored decoder."""
    from torch import nn

    def act():
        return {"relu": nn.ReLU, "tanh": nn.Tanh}[activation]()

    body, width = [], inputs
    for size in hidden:
        body += [nn.Linear(width, size), act()]
        width = size
    decoder, back = [], latent
    for size in reversed(hidden):
        decoder += [nn.Linear(back, size), act()]
        back = size
    decoder.append(nn.Linear(back, inputs))
    return nn.ModuleDict({"body": nn.Sequential(*body), "mean": nn.Linear(width, latent),
                          "log_var": nn.Linear(width, latent), "decoder": nn.Sequential(*decoder)})


def torch_latent_means(model, pixels: np.ndarray) -> np.ndarray:
    """Latent means from the torch model, for patches of shape (n, p, p) or (n, p * p)."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32).reshape(len(pixels), -1))
    with torch.no_grad():
        return model["mean"](model["body"](x)).numpy()


def export_weights(model) -> list:
    """(W, b) pairs of the encoder path, ``W`` as (inputs, outputs) for ``x @ W + b``."""
    linears = [layer for layer in model["body"] if hasattr(layer, "weight")] + [model["mean"]]
    return [(layer.weight.detach().numpy().T.copy(), layer.bias.detach().numpy().copy()) for layer in linears]


def _losses(torch, model, x):
    """Per-batch negative ELBO (per patch) with the optimal Gaussian noise level, and its parts."""
    hidden = model["body"](x)
    mean, log_var = model["mean"](hidden), model["log_var"](hidden)
    z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
    reconstruction = model["decoder"](z)
    mse = ((reconstruction - x) ** 2).mean()
    # With sigma^2 = MSE the Gaussian NLL is D/2 * log(MSE) + const: no weight to hand-tune.
    sigma2 = torch.clamp(mse.detach(), min=MIN_SIGMA ** 2)
    nll = 0.5 * x.shape[1] * (torch.log(sigma2) + mse / sigma2)
    kl = 0.5 * (mean ** 2 + torch.exp(log_var) - 1.0 - log_var).sum(dim=1).mean()
    return nll + kl, mse, kl


def _fit(torch, train, valid, hidden, latent, activation, epochs, batch_size, learning_rate, seed, log):
    """The training loop: Adam on shuffled mini-batches, a validation loss after each epoch."""
    train, valid = torch.from_numpy(train), torch.from_numpy(valid)
    model = build_model(train.shape[1], hidden, latent, activation)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        totals = np.zeros(3)
        batches = torch.randperm(len(train), generator=generator).split(batch_size)
        for batch in batches:
            loss, mse, kl = _losses(torch, model, train[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            totals += [loss.item(), mse.item(), kl.item()]
        row = {"epoch": epoch, "loss": totals[0] / len(batches), "mse": totals[1] / len(batches),
               "kl": totals[2] / len(batches)}
        if len(valid):
            model.eval()
            with torch.no_grad():
                loss, mse, kl = _losses(torch, model, valid)
            row.update(valid_loss=loss.item(), valid_mse=mse.item(), valid_kl=kl.item())
        row["seconds"] = time.perf_counter() - epoch_started
        history.append(row)
        shown = f", validation {row['valid_loss']:.2f}" if len(valid) else ""
        log(f"epoch {epoch}/{epochs}: loss {row['loss']:.2f} (RMSE {np.sqrt(row['mse']):.4f}, "
            f"KL {row['kl']:.2f}){shown}, {row['seconds']:.1f} s")
    model.eval()
    return model, history


def train_encoder(folder, out, epochs: int = EPOCHS, latent: int = LATENT_DIM, seed: int = 0, hidden=HIDDEN,
                  activation: str = ACTIVATION, batch_size: int = BATCH_SIZE, learning_rate: float = LEARNING_RATE,
                  patches_per_scan: int | None = PATCHES_PER_SCAN, threads: int = THREADS,
                  scans=None, log=print) -> TrainingResult:
    """Train a patch VAE on every scan of ``folder`` and write the numpy encoder file ``out``.

    Parameters
    ----------
    folder : str or path-like
        Scans to learn from (see :func:`find_training_scans`); ignored when ``scans`` is given.
    out : str or path-like
        Model file to write (``.npz``).
    epochs, latent, seed, hidden, activation, batch_size, learning_rate
        Training settings; ``hidden`` lists the encoder's hidden widths.
    patches_per_scan : int or None
        Random subset drawn from scans with more patches (``None``: all).
    threads : int
        torch CPU threads while training (restored afterwards); results repeat for a given count.
    scans : list of str, optional
        Explicit image files instead of searching ``folder``.
    log : callable(str)
        Progress messages (one line per scan and per epoch).

    Raises
    ------
    TrainingError
        With a one-line reason (torch missing, bad settings, nothing to train on, export mismatch).
    """
    try:
        import torch
    except ImportError:
        raise TrainingError("training an encoder needs torch; install the CPU build, e.g. "
                            "'pip install torch==2.13.0'") from None
    hidden = tuple(int(h) for h in hidden)
    if epochs < 1 or latent < 1 or batch_size < 1 or learning_rate <= 0 or any(h < 1 for h in hidden):
        raise TrainingError("epochs, latent size, batch size, hidden widths and learning rate must be positive")
    if activation not in ACTIVATIONS:
        raise TrainingError(f"unknown activation '{activation}'; choose from {', '.join(ACTIVATIONS)}")
    if int(threads) < 1 or (patches_per_scan is not None and patches_per_scan < 0):
        raise TrainingError("threads must be at least 1 and patches_per_scan 0 or more")
    started = time.perf_counter()
    paths = list(scans) if scans is not None else find_training_scans(folder)
    log(f"reading {len(paths)} scans")
    pixels, used = collect_patches(paths, patches_per_scan, seed, log)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(pixels))
    n_valid = int(round(VALIDATION_FRACTION * len(pixels))) if len(pixels) >= 200 else 0
    log(f"{len(pixels) - n_valid} training and {n_valid} validation patches of {PATCH_SIZE}x{PATCH_SIZE} "
        f"from {len(used)} scans ({time.perf_counter() - started:.1f} s)")

    # Seed, threads and determinism are set for training only and restored afterwards, so that
    # calling this from a larger program (or a test session) leaves torch as it was.
    previous_threads = torch.get_num_threads()
    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        torch.set_num_threads(int(threads))
        torch.use_deterministic_algorithms(True)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, history = _fit(torch, pixels[order[n_valid:]], pixels[order[:n_valid]], hidden, latent,
                                  activation, epochs, batch_size, learning_rate, seed, log)
    finally:
        torch.set_num_threads(previous_threads)
        torch.use_deterministic_algorithms(previous_deterministic)

    weights = export_weights(model)
    check = pixels[order[: min(len(pixels), 4096)]]
    expected = torch_latent_means(model, check)
    got = VAEEncoder(weights, PATCH_SIZE, activation).encode(check)
    difference = float(np.abs(got - expected).max())
    if not difference <= EXPORT_TOLERANCE:
        raise TrainingError(f"numpy encoder differs from torch by {difference:.2e}; model not written")
    # Latent dimensions that carry information (the rest collapsed to the prior).
    active = int(np.sum(expected.var(axis=0) > 0.01))
    training_s = time.perf_counter() - started
    metadata = {
        "architecture": "mlp", "patch_size": PATCH_SIZE, "latent_dim": int(latent), "hidden": list(hidden),
        "activation": activation, "input": {"planes": list(PLANES), "working_spacing_mm": TARGET_SPACING_MM,
                                            "intensity": "foreground 1st..99th percentile scaled to 0..1"},
        "training": {"epochs": int(epochs), "seed": int(seed), "batch_size": int(batch_size),
                     "learning_rate": float(learning_rate), "patches_per_scan": patches_per_scan,
                     "patches": int(len(pixels) - n_valid), "validation_patches": n_valid, "scans": len(used),
                     "scan_names": [os.path.relpath(p, os.fspath(folder)) if folder else os.path.basename(p)
                                    for p in used],
                     "final": {k: round(float(v), 6) for k, v in history[-1].items() if k != "epoch"},
                     "active_latents": active, "numpy_torch_max_abs_diff": difference,
                     "seconds": round(training_s, 1), "torch": torch.__version__,
                     "threads": int(threads),
                     "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")},
    }
    save_model(out, weights, metadata)
    log(f"wrote {out}: {latent}-d latent ({active} active), numpy matches torch to {difference:.1e}, "
        f"{training_s:.0f} s in all")
    return TrainingResult(path=os.fspath(out), metadata=metadata, model=model, history=history)
