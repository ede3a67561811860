"""Reading and validating 3D scalar volumes.

A :class:`Volume` holds voxels in Slicer's array order (K, J, I) -- the same
layout as ``slicer.util.arrayFromVolume`` -- and the 4x4 IJK-to-RAS matrix, so
the engine can be fed from a file (SimpleITK) or from an MRML node alike.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import struct
import sys
import tempfile
from dataclasses import dataclass, field

import numpy as np

#: Largest volume accepted, in voxels (about 4 GB as float32).
MAX_VOXELS = 1_000_000_000
#: Fewest slices a volume must have along each axis to be treated as 3D.
MIN_SLICES = 3

# ITK's physical space is LPS; Slicer's world (and every position VoteMI reports) is RAS.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


class VolumeError(ValueError):
    """An input volume that VoteMI cannot use; the message is one line for the user."""


@dataclass
class Volume:
    """A scalar 3D image in RAS space.

    Attributes
    ----------
    array : ndarray of float32, shape (K, J, I)
        Voxel values; ``array[k, j, i]`` is voxel (i, j, k).
    ijk_to_ras : ndarray, shape (4, 4)
        Homogeneous matrix mapping voxel indices (i, j, k) to RAS millimetres.
    name : str
        Human-readable name (file stem or node name).
    path : str or None
        Source file, when read from disk.
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    name: str = ""
    path: str | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def size_ijk(self) -> tuple[int, int, int]:
        k, j, i = self.array.shape
        return (i, j, k)

    @property
    def spacing_mm(self) -> tuple[float, float, float]:
        return tuple(float(s) for s in np.linalg.norm(self.ijk_to_ras[:3, :3], axis=0))


def volume_from_array(array_kji, ijk_to_ras, name: str = "", path: str | None = None) -> Volume:
    """Validate a (K, J, I) array and its IJK-to-RAS matrix and wrap them in a :class:`Volume`.

    Raises
    ------
    VolumeError
        If the array is not a finite, non-constant, scalar 3D volume of accepted size.
    """
    array = np.asarray(array_kji)
    label = name or "volume"
    if array.ndim == 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        kind = {2: "a 2D image", 4: "a 4D or multi-component image"}.get(array.ndim, f"{array.ndim}-dimensional")
        raise VolumeError(f"{label} is {kind} (shape {array.shape}); VoteMI needs a scalar 3D volume")
    if array.size > MAX_VOXELS:
        raise VolumeError(
            f"{label} has {array.size:,} voxels, more than the {MAX_VOXELS:,} VoteMI accepts; "
            "crop or resample it first")
    if min(array.shape) < MIN_SLICES:
        axis = "IJK"[2 - int(np.argmin(array.shape))]
        raise VolumeError(
            f"{label} has only {min(array.shape)} slice(s) along {axis} (size {tuple(reversed(array.shape))}); "
            f"VoteMI needs at least {MIN_SLICES} slices in every direction")
    if np.iscomplexobj(array) or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise VolumeError(f"{label} has voxel type {array.dtype}; VoteMI needs real scalar voxels")
    array = np.asarray(array, dtype=np.float32)
    finite = np.isfinite(array)
    if not finite.all():
        bad = int(array.size - np.count_nonzero(finite))
        raise VolumeError(f"{label} has {bad:,} NaN or infinite voxels; fix or mask them before selection")
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        what = "all zero" if lo == 0 else f"constant ({lo:g})"
        raise VolumeError(f"{label} is {what}: there is nothing to select from")
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4) or not np.isfinite(matrix).all() or abs(np.linalg.det(matrix[:3, :3])) < 1e-12:
        raise VolumeError(f"{label} has an invalid IJK-to-RAS matrix")
    return Volume(array=array, ijk_to_ras=matrix, name=name, path=path)


def load_volume(path) -> Volume:
    """Read a scalar 3D volume with SimpleITK.

    Parameters
    ----------
    path : str or path-like
        Any file SimpleITK reads (NIfTI, NRRD, MHA/MHD, ...) or a folder holding one DICOM series.

    Raises
    ------
    VolumeError
        With a one-line reason when the file is missing, unreadable or not a usable 3D volume.
    """
    import SimpleITK as sitk  # imported here so that the engine can be imported without it

    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeError(f"no such file or folder: {path}")
    chatter = []  # what ITK's readers print straight to stderr (MetaIO does, on short files)
    try:
        with _captured_stderr(chatter):
            if os.path.isdir(path):
                image = _read_dicom_folder(sitk, path)
            else:
                reader = sitk.ImageFileReader()
                reader.SetFileName(path)
                reader.ReadImageInformation()  # the header alone: refuse huge volumes before reading voxels
                _check_header(reader, _stem(path))
                _check_nifti_complete(path, _stem(path))
                image = reader.Execute()
    except RuntimeError as error:
        reason = [line.strip() for line in chatter + str(error).strip().splitlines() if line.strip()]
        # ITK's own text: the reader's first complaint names the problem best; the last line of the
        # exception is often a stale errno ("No such file or directory") or the source position.
        detail = " ".join(reason[:2]) if chatter else (reason[-1] if reason else "unknown reason")
        raise VolumeError(f"cannot read {path}: {detail}") from None
    if chatter:
        sys.stderr.write("\n".join(chatter) + "\n")
    name = _stem(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise VolumeError(
            f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel; VoteMI needs a scalar volume")
    if image.GetDimension() != 3:
        raise VolumeError(f"{name} is a {image.GetDimension()}D image; VoteMI needs a scalar 3D volume")
    voxels = image.GetNumberOfPixels()
    if voxels > MAX_VOXELS:
        raise VolumeError(
            f"{name} has {voxels:,} voxels, more than the {MAX_VOXELS:,} VoteMI accepts; crop or resample it first")
    # One float32 copy out of ITK's buffer: a view would dangle once ``image`` is freed.
    array = np.array(sitk.GetArrayViewFromImage(image), dtype=np.float32)  # (K, J, I)
    return volume_from_array(array, ijk_to_ras_from_image(image), name=name, path=path)


def _check_header(reader, name: str) -> None:
    size = reader.GetSize()
    voxels = int(np.prod(size, dtype=np.int64))
    if len(size) == 3 and voxels > MAX_VOXELS:
        raise VolumeError(
            f"{name} has {voxels:,} voxels ({'x'.join(map(str, size))}), more than the {MAX_VOXELS:,} "
            "VoteMI accepts; crop or resample it first")


def _check_nifti_complete(path: str, name: str) -> None:
    """Refuse a single-file NIfTI shorter than its header says: ITK reads a truncated .nii or .nii.gz
    without complaint and fills the missing voxels with zeros."""
    lower = path.lower()
    if not (lower.endswith(".nii") or lower.endswith(".nii.gz")):
        return
    compressed = lower.endswith(".gz")
    try:
        with (gzip.open if compressed else open)(path, "rb") as handle:
            expected = _nifti_data_end(handle.read(540))
    except (OSError, EOFError):
        return  # not readable as gzip: leave the diagnosis to ITK
    if expected is None:
        return
    if compressed:
        # The gzip trailer holds the uncompressed size modulo 2^32; decompress only if it disagrees.
        with open(path, "rb") as handle:
            handle.seek(-4, os.SEEK_END)
            if struct.unpack("<I", handle.read(4))[0] == expected % 2 ** 32:
                return
        actual = 0
        try:
            with gzip.open(path, "rb") as handle:
                while chunk := handle.read(1 << 16):  # small reads: a cut-off stream loses little
                    actual += len(chunk)
        except (OSError, EOFError):
            pass  # a cut-off gzip stream: ``actual`` is what could be decompressed
    else:
        actual = os.path.getsize(path)
    if actual < expected:
        raise VolumeError(f"{name} is truncated: its header promises {expected:,} bytes, the file holds "
                          f"{actual:,}{' (uncompressed)' if compressed else ''}")


def _nifti_data_end(header: bytes):
    """Offset of the last voxel byte of a single-file NIfTI-1/2 (None if ``header`` is not one)."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            dims = struct.unpack(order + "8h", header[40:56])
            bitpix = struct.unpack(order + "h", header[72:74])[0]
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            dims = struct.unpack(order + "8q", header[16:80])
            bitpix = struct.unpack(order + "h", header[14:16])[0]
            offset = int(struct.unpack(order + "q", header[168:176])[0])
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0 or any(n <= 0 for n in dims[1:rank + 1]):
        return None
    return offset + int(np.prod(dims[1:rank + 1], dtype=np.int64)) * bitpix // 8


@contextlib.contextmanager
def _captured_stderr(lines: list):
    """Collect what C++ code writes to file descriptor 2 meanwhile into ``lines`` (one entry per line)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (some embedded interpreters): capture nothing
        yield
        return
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode("utf-8", "replace").splitlines() if line.strip())


def ijk_to_ras_from_image(image) -> np.ndarray:
    """The 4x4 IJK-to-RAS matrix of a SimpleITK image (ITK stores LPS)."""
    direction = np.array(image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = np.array(image.GetSpacing(), dtype=float)
    origin = np.array(image.GetOrigin(), dtype=float)
    matrix = np.eye(4)
    matrix[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(spacing)
    matrix[:3, 3] = _LPS_TO_RAS @ origin
    return matrix


def _read_dicom_folder(sitk, folder):
    reader = sitk.ImageSeriesReader()
    # GDCM warns on stderr, over several lines, when a folder holds no series; the error below says it in one.
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        series = reader.GetGDCMSeriesIDs(folder)
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    if not series:
        raise VolumeError(f"{folder} is a folder without a DICOM series")
    # The series with most files is the one a user most likely means.
    files = max((reader.GetGDCMSeriesFileNames(folder, uid) for uid in series), key=len)
    reader.SetFileNames(files)
    return reader.Execute()


def _stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".gz"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base
