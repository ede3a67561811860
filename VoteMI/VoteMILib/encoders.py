"""Trained patch encoders that run with numpy alone.

A model file written by ``votemi train-encoder`` (see :mod:`VoteMILib.training`) is a ``.npz``
archive holding the encoder half of a patch VAE and a JSON metadata record. Selection uses the
latent mean of each patch as its feature vector, exactly as the Vote-MI paper does; the decoder is
only needed for training and is not stored. Inference is plain numpy so that it runs inside
Slicer's Python, where torch is usually not installed.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile

import numpy as np

from .features import PATCH_SIZE, PatchEncoder
from .outputs import write_atomic
from .volumes import VolumeError

#: Identifies VoteMI patch-encoder files; stored in every file's metadata.
MODEL_FORMAT = "votemi-patch-vae"
#: Version of the file layout; bumped when an older reader could misread a newer file.
FORMAT_VERSION = 1
#: Architectures this reader can evaluate.
ARCHITECTURES = ("mlp",)
#: Hidden-layer activations this reader can evaluate (same names as in training).
ACTIVATIONS = ("relu", "tanh")


class ModelError(VolumeError):
    """A patch-encoder file that cannot be used; the message is one line for the user."""


def _relu(x):
    return np.maximum(x, 0.0, out=x)


def _tanh(x):
    return np.tanh(x, out=x)


_ACTIVATION_FUNCTIONS = {"relu": _relu, "tanh": _tanh}


class VAEEncoder(PatchEncoder):
    """Latent mean of a patch VAE's encoder, computed with numpy.

    The encoder is an MLP: the flattened ``p x p`` patch goes through the hidden layers
    (``activation`` after each) and one linear layer gives the latent mean. Patches with several
    sequences, shape (n, c, p, p), are encoded channel by channel with the same weights and the
    latents concatenated, so the feature dimension is ``c * latent_dim``.

    Parameters
    ----------
    weights : list of (ndarray, ndarray)
        ``(W, b)`` per layer, ``W`` of shape (inputs, outputs); the last pair gives the latent mean.
    patch_size : int
    activation : str
        One of :data:`ACTIVATIONS`.
    metadata : dict, optional
        The file's metadata record, reported by :meth:`describe`.
    """

    name = "vae"

    def __init__(self, weights, patch_size: int, activation: str = "relu", metadata: dict | None = None):
        if activation not in _ACTIVATION_FUNCTIONS:
            raise ModelError(f"unknown activation '{activation}'; this VoteMI knows {', '.join(ACTIVATIONS)}")
        self.weights = [(np.ascontiguousarray(w, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
                        for w, b in weights]
        self.patch_size = int(patch_size)
        self.activation = activation
        self.metadata = dict(metadata or {})
        self.latent_dim = int(self.weights[-1][0].shape[1])

    def fit(self, patches, seed=0):
        """A trained encoder is fixed: nothing is fitted to the volume being analysed."""
        return self

    def encode(self, pixels: np.ndarray) -> np.ndarray:
        """Latent means of single-sequence patches.

        Parameters
        ----------
        pixels : ndarray, shape (n, p, p) or (n, p * p)

        Returns
        -------
        ndarray, shape (n, latent_dim), float32
        """
        x = np.asarray(pixels, dtype=np.float32).reshape(len(pixels), -1)
        if x.shape[1] != self.patch_size ** 2:
            raise ValueError(f"patches of {x.shape[1]} pixels given to an encoder trained on "
                             f"{self.patch_size}x{self.patch_size} patches")
        act = _ACTIVATION_FUNCTIONS[self.activation]
        for w, b in self.weights[:-1]:
            x = x @ w
            x += b  # in place: one temporary less per layer on ~30k x 128 values
            x = act(x)
        w, b = self.weights[-1]
        x = x @ w
        x += b
        return x

    def transform(self, patches):
        """Features of patches of shape (n, c, p, p): per-sequence latent means, concatenated."""
        patches = np.asarray(patches)
        if patches.ndim == 3:
            patches = patches[:, None]
        if patches.ndim != 4 or patches.shape[2:] != (self.patch_size, self.patch_size):
            raise ValueError(f"encoder expects patches of shape (n, c, {self.patch_size}, {self.patch_size}), "
                             f"got {patches.shape}")
        n, c = patches.shape[:2]
        # All sequences in one batch (same weights), then each patch's latents side by side.
        latents = self.encode(patches.transpose(1, 0, 2, 3).reshape(n * c, -1))
        return latents.reshape(c, n, self.latent_dim).transpose(1, 0, 2).reshape(n, c * self.latent_dim)

    def describe(self):
        training = self.metadata.get("training", {})
        info = {"name": self.name, "architecture": self.metadata.get("architecture", "mlp"),
                "hidden": [int(w.shape[1]) for w, _ in self.weights[:-1]], "activation": self.activation,
                "latent_dim": self.latent_dim, "patch_size": self.patch_size,
                "format_version": self.metadata.get("format_version")}
        for key in ("file", "sha256"):
            if key in self.metadata:
                info[key] = self.metadata[key]
        for key in ("epochs", "seed", "patches", "scans"):
            if key in training:
                info[f"trained_{key}"] = training[key]
        return info


def save_model(path, weights, metadata: dict) -> None:
    """Write an encoder file: ``layer{i}_weight``/``layer{i}_bias`` arrays and a JSON ``metadata`` entry.

    Written atomically (``outputs.write_atomic``), so an interrupted run never leaves a truncated
    model behind. The archive holds no pickled objects; it is read with ``allow_pickle=False``.
    """
    path = os.fspath(path)
    arrays = {}
    for i, (w, b) in enumerate(weights):
        arrays[f"layer{i}_weight"] = np.asarray(w, dtype=np.float32)
        arrays[f"layer{i}_bias"] = np.asarray(b, dtype=np.float32)
    record = {"format": MODEL_FORMAT, "format_version": FORMAT_VERSION, **metadata}
    arrays["metadata"] = np.array(json.dumps(record, sort_keys=True))
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_atomic(path, buffer.getvalue(), what="encoder model")


def load_patch_encoder(path, patch_size: int | None = PATCH_SIZE) -> VAEEncoder:
    """Read a model file written by ``votemi train-encoder``.

    Parameters
    ----------
    path : str or path-like
    patch_size : int or None
        Patch side the caller will feed; a model trained on another size is refused.
        ``None`` accepts any size.

    Raises
    ------
    ModelError
        A :class:`~VoteMILib.volumes.VolumeError` (so a ``ValueError``) with a one-line reason when
        the file is missing, not a VoteMI encoder, corrupt, from a newer VoteMI, or incompatible.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ModelError(f"no such encoder file: {path}")
    if os.path.isdir(path):
        raise ModelError(f"{path} is a folder; --encoder needs the .npz file written by 'votemi train-encoder'")
    if not zipfile.is_zipfile(path):
        # np.load would try other formats and blame pickling; the plain reason is more useful.
        raise ModelError(f"{path} is not a readable encoder file (not a .npz archive from 'votemi train-encoder')")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelError(f"{path} is not a readable encoder file ({reason})") from None
    if "metadata" not in arrays:
        raise ModelError(f"{path} is not a VoteMI encoder file (no metadata record)")
    try:
        metadata = json.loads(str(arrays["metadata"]))
    except (TypeError, ValueError):
        raise ModelError(f"{path} has an unreadable metadata record") from None
    if not isinstance(metadata, dict) or metadata.get("format") != MODEL_FORMAT:
        raise ModelError(f"{path} is not a VoteMI patch-encoder file")
    version = metadata.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{path} has format version {version}; this VoteMI reads up to version "
                         f"{FORMAT_VERSION} (update VoteMI)")
    architecture = metadata.get("architecture")
    if architecture not in ARCHITECTURES:
        raise ModelError(f"{path} uses architecture '{architecture}', which this VoteMI cannot run")
    activation = metadata.get("activation")
    if activation not in ACTIVATIONS:
        raise ModelError(f"{path} uses activation '{activation}', which this VoteMI cannot run")
    model_patch = metadata.get("patch_size")
    if not isinstance(model_patch, int) or model_patch < 1:
        raise ModelError(f"{path} does not record a valid patch size")
    if patch_size is not None and model_patch != int(patch_size):
        raise ModelError(f"{path} was trained on {model_patch}x{model_patch} patches, but selection cuts "
                         f"{patch_size}x{patch_size} patches")

    weights = _layers(path, arrays, model_patch)
    latent = metadata.get("latent_dim")
    if latent != weights[-1][0].shape[1]:
        raise ModelError(f"{path} is inconsistent: metadata says latent_dim {latent}, weights give "
                         f"{weights[-1][0].shape[1]}")
    with open(path, "rb") as handle:
        metadata["sha256"] = hashlib.sha256(handle.read()).hexdigest()[:16]
    metadata["file"] = os.path.basename(path)
    return VAEEncoder(weights, model_patch, activation, metadata)


def _layers(path, arrays, patch_size):
    """The (W, b) pairs of an archive, checked to chain from p*p inputs to the latent mean."""
    weights = []
    inputs = patch_size * patch_size
    i = 0
    while f"layer{i}_weight" in arrays:
        w, b = arrays[f"layer{i}_weight"], arrays.get(f"layer{i}_bias")
        if b is None or w.ndim != 2 or b.shape != (w.shape[1],) or w.shape[0] != inputs:
            raise ModelError(f"{path} is corrupt: layer {i} has shape {w.shape} after {inputs} inputs")
        if not (np.issubdtype(w.dtype, np.floating) and np.issubdtype(b.dtype, np.floating)):
            raise ModelError(f"{path} is corrupt: layer {i} is not floating point")
        if not (np.isfinite(w).all() and np.isfinite(b).all()):
            raise ModelError(f"{path} is corrupt: layer {i} holds NaN or infinite weights")
        weights.append((w, b))
        inputs = w.shape[1]
        i += 1
    if not weights:
        raise ModelError(f"{path} holds no encoder weights")
    return weights
