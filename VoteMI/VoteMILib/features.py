"""Patches of every slice in each plane, and the encoders that turn them into feature vectors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import NORMAL_INDEX, PLANES

#: Patch side on the working grid (8 voxels of 2 mm = 16 mm on a head scan).
PATCH_SIZE = 8
#: A patch is kept when at least this fraction of it is foreground.
MIN_FOREGROUND = 0.5



@dataclass
class PatchSet:
    """Patches of all requested planes.

    Attributes
    ----------
    pixels : ndarray, shape (n, p, p), float32
    plane : ndarray of int, shape (n,)
        Index into ``planes`` of each patch.
    slice_index : ndarray of int, shape (n,)
        Working-grid slice (ascending RAS position) each patch comes from.
    center : ndarray of int, shape (n, 3)
        Working-grid voxel (x, y, z) at the patch centre, to relate patches across planes.
    planes : tuple of str
    """

    pixels: np.ndarray
    plane: np.ndarray
    slice_index: np.ndarray
    center: np.ndarray
    planes: tuple

    def __len__(self) -> int:
        return len(self.pixels)


def extract_patches(data: np.ndarray, mask: np.ndarray, planes=PLANES, patch_size: int = PATCH_SIZE,
                    min_foreground: float = MIN_FOREGROUND) -> PatchSet:
    """Cut every slice of each plane into a regular grid of square patches.

    Parameters
    ----------
    data, mask : ndarray, shape (X, Y, Z)
        Working-grid intensities and foreground, axes along (R, A, S).
    planes : sequence of str
    patch_size : int
    min_foreground : float
        Background patches (mostly outside the head) are skipped.
    """
    p = int(patch_size)
    pixels, plane_ids, slices, centers = [], [], [], []
    for plane_id, plane in enumerate(planes):
        axis = NORMAL_INDEX[plane]
        stack = np.moveaxis(data, axis, 0)
        stack_mask = np.moveaxis(mask, axis, 0)
        n, u, v = stack.shape
        nu, nv = u // p, v // p
        if nu == 0 or nv == 0:
            continue
        # Centre the patch grid so that cropped margins are split evenly.
        u0, v0 = (u - nu * p) // 2, (v - nv * p) // 2
        tiles = stack[:, u0:u0 + nu * p, v0:v0 + nv * p].reshape(n, nu, p, nv, p).transpose(0, 1, 3, 2, 4)
        fill = stack_mask[:, u0:u0 + nu * p, v0:v0 + nv * p].reshape(n, nu, p, nv, p).mean(axis=(2, 4))
        s, a, b = np.nonzero(fill >= min_foreground)
        pixels.append(tiles[s, a, b])
        plane_ids.append(np.full(len(s), plane_id))
        slices.append(s)
        # Patch centre in the moved axes (slice, u, v), then back to (x, y, z).
        moved = np.stack([s, u0 + a * p + p // 2, v0 + b * p + p // 2], axis=1)
        order = np.argsort([axis] + [d for d in range(3) if d != axis])
        centers.append(moved[:, order])
    if not pixels:
        empty = np.zeros((0, p, p), np.float32)
        return PatchSet(empty, np.zeros(0, int), np.zeros(0, int), np.zeros((0, 3), int), tuple(planes))
    return PatchSet(np.concatenate(pixels).astype(np.float32, copy=False), np.concatenate(plane_ids),
                    np.concatenate(slices), np.concatenate(centers), tuple(planes))


class PatchEncoder:
    """Interface of a patch feature extractor.

    ``fit`` sees the patches of the volume being analysed (a trained encoder ignores it);
    ``transform`` maps patches of shape (n, c, p, p) -- c sequences stacked -- to features (n, d).
    Patch intensities are scaled so that the volume's foreground spans about 0..1.
    """

    name = "encoder"

    def fit(self, patches: np.ndarray, seed: int = 0) -> "PatchEncoder":
        return self

    def transform(self, patches: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name}


class PCAEncoder(PatchEncoder):
    """Principal components of the volume's own patches: needs no pretrained weights.

    Parameters
    ----------
    components : int
        Feature dimension (the paper's VAE uses a 10-d latent).
    max_fit_patches : int
        Patches sampled to fit the components; the fit is seeded.
    """

    name = "pca"

    def __init__(self, components: int = 10, max_fit_patches: int = 10000):
        self.components = components
        self.max_fit_patches = max_fit_patches
        self.mean_ = None
        self.basis_ = None

    def fit(self, patches, seed=0):
        flat = patches.reshape(len(patches), -1)
        rng = np.random.default_rng(seed)
        if len(flat) > self.max_fit_patches:
            flat = flat[rng.choice(len(flat), self.max_fit_patches, replace=False)]
        flat = flat.astype(np.float64)
        self.mean_ = flat.mean(axis=0)
        centred = flat - self.mean_
        # Eigenvectors of the small (d x d) covariance: much cheaper than an SVD of the patches.
        eigenvalues, vectors = np.linalg.eigh(np.ascontiguousarray(centred.T) @ centred)
        vectors = vectors[:, np.argsort(eigenvalues)[::-1][: self.components]]
        # Fix each component's sign so results do not depend on the LAPACK build.
        signs = np.sign(vectors[np.argmax(np.abs(vectors), axis=0), np.arange(vectors.shape[1])])
        self.basis_ = (vectors * signs).astype(np.float32)
        self.mean_ = self.mean_.astype(np.float32)
        return self

    def transform(self, patches):
        if self.basis_ is None:
            raise RuntimeError("PCAEncoder.transform called before fit")
        return (patches.reshape(len(patches), -1) - self.mean_) @ self.basis_

    def describe(self):
        return {"name": self.name, "components": self.components}
