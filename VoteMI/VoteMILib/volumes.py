"""Reading and validating 3D scalar volumes.

A :class:`Volume` holds voxels in Slicer's array order (K, J, I) -- the same
layout as ``slicer.util.arrayFromVolume`` -- and the 4x4 IJK-to-RAS matrix, so
the engine can be fed from a file (SimpleITK) or from an MRML node alike.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import struct
import sys
import tempfile
import zlib
from dataclasses import dataclass, field

import numpy as np

#: Largest volume accepted, in voxels (about 4 GB as float32).
MAX_VOXELS = 1_000_000_000
#: Fewest slices a volume must have along each axis to be treated as 3D.
MIN_SLICES = 3
#: Bytes read at a time when a NIfTI file is checked (decompressed, CRC, NaN/Inf) before ITK reads it.
_SCAN_CHUNK = 1 << 20
#: NIfTI datatype codes of floating-point voxels, whose NaN/Inf ITK's NIfTI reader would turn into 0.
_NIFTI_FLOATS = {16: "f4", 64: "f8"}

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
    metadata : dict
        What the reader found worth telling: ``"warnings"`` (one-line strings for the user) and, for
        a DICOM folder, ``"dicom_series"`` (UID, description, slice count, series in the folder).
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


def load_volume(path, series: str | None = None, name: str | None = None) -> Volume:
    """Read a scalar 3D volume with SimpleITK.

    Parameters
    ----------
    path : str or path-like
        Any file SimpleITK reads (NIfTI, NRRD, MHA/MHD, ...) or a folder holding DICOM series.
    series : str, optional
        SeriesInstanceUID to read from a DICOM folder holding several series (default: the series
        with most slices; ``metadata["warnings"]`` then lists the others).
    name : str, optional
        The volume's name in messages, reports and prompts (default: the file's name without its suffix).

    Raises
    ------
    VolumeError
        With a one-line reason when the file is missing, unreadable or not a usable 3D volume.
    """
    import SimpleITK as sitk  # imported here so that the engine can be imported without it

    path = os.fspath(path)
    if not os.path.exists(path):
        raise VolumeError(f"no such file or folder: {printable_path(path)}")
    check_itk_path(path)
    name = name or _stem(path)
    dicom = os.path.isdir(path)
    if series and not dicom:
        raise VolumeError(f"{path} is a file: a series UID chooses among the DICOM series of a folder")
    chatter = []  # what ITK's readers print straight to stderr (MetaIO does, on short files)
    try:
        with _captured_stderr(chatter):
            if dicom:
                image, found = _read_dicom_folder(sitk, path, series)
            else:
                reader = sitk.ImageFileReader()
                reader.SetFileName(path)
                try:
                    reader.ReadImageInformation()  # the header alone: refuse huge volumes before reading voxels
                except RuntimeError:
                    _check_nifti(path, name)  # a cut or corrupt NIfTI is named so, not by ITK's guess
                    raise
                _check_header(reader, name)
                _check_nifti(path, name)
                image = reader.Execute()
    except RuntimeError as error:
        reason = [line.strip() for line in chatter + str(error).strip().splitlines() if line.strip()]
        # ITK's own text: the reader's first complaint names the problem best; the last line of the
        # exception is often a stale errno ("No such file or directory") or the source position.
        detail = " ".join(reason[:2]) if chatter else (reason[-1] if reason else "unknown reason")
        raise VolumeError(f"cannot read {path}: {_plain_itk_reason(str(error)) or detail}") from None
    if chatter and not dicom:  # GDCM's notes on a DICOM series are replaced by the one-line warnings below
        sys.stderr.write("\n".join(chatter) + "\n")
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
    matrix = ijk_to_ras_from_image(image)
    metadata = {"warnings": []}
    if dicom:
        metadata["warnings"] += found.notes
        metadata["dicom_series"] = found.summary()
        metadata["dicom_files"] = [os.path.abspath(f) for f in found.files]  # for exports that cite them
        # One position per 2D file; a multi-frame file holds the whole volume and is left to ITK.
        if found.positions_lps is not None and len(found.positions_lps) == len(array) >= 2:
            array, matrix = _even_slices(array, matrix, found.positions_lps, name, metadata["warnings"])
    volume = volume_from_array(array, matrix, name=name, path=path)
    volume.metadata = metadata
    return volume


_SIZE_MISMATCH = re.compile(r"Size mismatch! The size of\s+(?P<file>.+?) is \[(?P<i>\d+), (?P<j>\d+)(?:, \d+)*\] and "
                            r"does not match the required size \[(?P<ri>\d+), (?P<rj>\d+)(?:, \d+)*\] from file "
                            r"(?P<first>.+?)\s*$", re.MULTILINE)


def _plain_itk_reason(text: str) -> str:
    """What an ITK error means, for the ITK errors whose own words mislead; "" for the others.

    A singular direction matrix is otherwise reported by its last row (``0 0 1``); a DICOM slice of another
    size by ITK's bracketed sizes, without saying what to do.
    """
    if "Bad direction, determinant is 0" in text:
        return ("its direction matrix is singular (two of its axes point the same way, so the voxels have no "
                "position in space); fix the orientation in its header or export the scan again")
    match = _SIZE_MISMATCH.search(text)
    if match:
        return (f"its slice {os.path.basename(match['file'])} is {match['i']}x{match['j']} pixels, the series' "
                f"others {match['ri']}x{match['rj']} (from {os.path.basename(match['first'])}): one series holds "
                "images of two sizes (a localizer or a secondary capture?); move that file out of the folder")
    return ""


def _check_header(reader, name: str) -> None:
    size = reader.GetSize()
    voxels = int(np.prod(size, dtype=np.int64))
    if len(size) == 3 and voxels > MAX_VOXELS:
        raise VolumeError(
            f"{name} has {voxels:,} voxels ({'x'.join(map(str, size))}), more than the {MAX_VOXELS:,} "
            "VoteMI accepts; crop or resample it first")


def printable_path(path: str) -> str:
    """``path`` for a one-line message: bytes that are not valid UTF-8 shown as ``\\xe9``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace") if isinstance(path, str) else repr(path)


def check_itk_path(path: str) -> None:
    """Refuse a path ITK cannot be given: not valid UTF-8 (a Latin-1 name from an old share).

    SimpleITK passes file names on as UTF-8; a name Python could only decode with surrogate escapes
    makes it abort the whole process (a C++ ``std::logic_error``), so it must never reach ITK.
    """
    try:
        os.fspath(path).encode("utf-8")
    except UnicodeEncodeError:
        raise VolumeError(f"cannot read {printable_path(path)}: its name is not valid UTF-8, which ITK cannot "
                          "open; rename it (or its folder) with UTF-8 characters") from None


def _check_nifti(path: str, name: str) -> None:
    """Check a single-file NIfTI's voxel data before ITK reads it, streaming: complete, not corrupt, finite.

    ITK reads a truncated .nii or .nii.gz without complaint (the missing voxels become zeros), never
    checks the gzip CRC (a flipped byte gives garbage voxels), and turns NaN/Inf voxels into 0.
    """
    lower = path.lower()
    if not (lower.endswith(".nii") or lower.endswith(".nii.gz")):
        return
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # a plain .nii named .nii.gz is read as plain, as ITK does
    if not compressed:
        with open(path, "rb") as handle:
            scan = _scan_nifti(handle)
    else:
        scan = _NiftiScan()
        try:
            with gzip.open(path, "rb") as handle:
                _scan_nifti(handle, scan)
        except EOFError:
            scan.cut_short = True
        except (gzip.BadGzipFile, zlib.error, OSError) as error:
            raise VolumeError(f"{printable_path(path)} is corrupt: its gzip data fails the check ({error}); copy the file "
                              "again from its source") from None
    _refuse_bad_scan(scan, name, compressed)


@dataclass
class _NiftiScan:
    """What streaming through a NIfTI file found."""

    header: bytes = b""
    data_end: int | None = None  # offset of the last voxel byte + 1, from the header; None: not a NIfTI-1/2
    size: int = 0  # bytes read (uncompressed)
    nonfinite: int = 0  # NaN or infinite float voxels
    cut_short: bool = False  # the gzip stream ended before its end marker


def _scan_nifti(handle, scan: _NiftiScan | None = None) -> _NiftiScan:
    """Read ``handle`` to its end in chunks, filling ``scan``: its size and the NaN/Inf of float voxels.

    ``scan`` is updated as the reading goes, so that a stream cut short still tells how far it got.
    """
    scan = scan or _NiftiScan()
    while len(scan.header) < 540 and (chunk := handle.read(540 - len(scan.header))):
        scan.header += chunk
        scan.size = len(scan.header)
    layout = _nifti_layout(scan.header)
    if layout is None:
        return scan
    offset, scan.data_end, dtype = layout
    counter = _NonFiniteCounter(offset, scan.data_end, dtype, scan)
    counter.feed(scan.header, 0)
    while chunk := handle.read(_SCAN_CHUNK):
        counter.feed(chunk, scan.size)
        scan.size += len(chunk)
    return scan


class _NonFiniteCounter:
    """Counts NaN/Inf among float voxels fed as consecutive byte chunks (voxels may straddle chunks)."""

    def __init__(self, offset: int, end: int, dtype, scan: _NiftiScan):
        self.offset, self.end, self.dtype, self.scan = offset, end, dtype, scan
        self.pending = b""

    def feed(self, chunk: bytes, at: int) -> None:
        """Count the voxels of ``chunk``, which starts at file offset ``at``."""
        if self.dtype is None:
            return
        low, high = max(self.offset - at, 0), min(self.end - at, len(chunk))
        if high <= low:
            return
        data = self.pending + chunk[low:high]
        whole = len(data) - len(data) % self.dtype.itemsize
        values = np.frombuffer(data, dtype=self.dtype, count=whole // self.dtype.itemsize)
        self.scan.nonfinite += int(values.size - np.count_nonzero(np.isfinite(values)))
        self.pending = data[whole:]


def _refuse_bad_scan(scan: _NiftiScan, name: str, compressed: bool) -> None:
    """Raise VolumeError for a cut-short, truncated or non-finite NIfTI."""
    if scan.data_end is None:
        if scan.cut_short:
            raise VolumeError(f"{name} is truncated: the file ends inside its NIfTI header ({scan.size} bytes "
                              "uncompressed); copy the file again from its source")
        return  # not a single-file NIfTI-1/2: ITK says what it is
    if scan.size < scan.data_end or scan.cut_short:
        raise VolumeError(f"{name} is truncated: its header promises {scan.data_end:,} bytes, the file holds "
                          f"{scan.size:,}{' (uncompressed)' if compressed else ''}")
    if scan.nonfinite:
        raise VolumeError(f"{name} has {scan.nonfinite:,} NaN or infinite voxels; fix or mask them before "
                          "selection")


def _nifti_layout(header: bytes):
    """(voxel offset, end of the voxels, float dtype or None) of a single-file NIfTI-1/2 header, else None."""
    for order in "<>":
        if len(header) >= 348 and struct.unpack(order + "i", header[:4])[0] == 348 and header[344:347] == b"n+1":
            dims = struct.unpack(order + "8h", header[40:56])
            datatype, bitpix = struct.unpack(order + "2h", header[70:74])
            offset = int(struct.unpack(order + "f", header[108:112])[0])
            break
        if len(header) >= 540 and struct.unpack(order + "i", header[:4])[0] == 540 and header[4:7] == b"n+2":
            dims = struct.unpack(order + "8q", header[16:80])
            datatype, bitpix = struct.unpack(order + "2h", header[12:16])
            offset = int(struct.unpack(order + "q", header[168:176])[0])
            break
    else:
        return None
    rank = dims[0]
    if not 1 <= rank <= 7 or bitpix <= 0 or offset < 0 or any(n <= 0 for n in dims[1:rank + 1]):
        return None
    dtype = np.dtype(order + _NIFTI_FLOATS[datatype]) if datatype in _NIFTI_FLOATS else None
    return offset, offset + int(np.prod(dims[1:rank + 1], dtype=np.int64)) * bitpix // 8, dtype


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


@dataclass
class _DicomSeries:
    """One DICOM series of a folder, and what reading it found."""

    uid: str
    files: list
    description: str = ""
    series_in_folder: int = 1
    notes: list = field(default_factory=list)
    #: ImagePositionPatient (LPS mm) of each file, in reading order; None if a file lacks it.
    positions_lps: np.ndarray | None = None

    def label(self) -> str:
        what = f" ({self.description})" if self.description else ""
        return f"{self.uid}{what}, {len(self.files)} slices"

    def summary(self) -> dict:
        return {"uid": self.uid, "description": self.description, "slices": len(self.files),
                "series_in_folder": self.series_in_folder}


def _read_dicom_folder(sitk, folder, wanted=None):
    """Read one series of a DICOM folder: ``wanted`` (a SeriesInstanceUID) or the one with most files."""
    for entry in sorted(os.listdir(folder)):  # GDCM lists the folder itself: no name it cannot take may be there
        check_itk_path(os.path.join(folder, entry))
    reader = sitk.ImageSeriesReader()
    # GDCM and ITK warn on stderr, over several lines (no series, uneven slices); VoteMI says it in one.
    warnings = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        uids = reader.GetGDCMSeriesIDs(folder)
        if not uids:
            raise VolumeError(f"{folder} is a folder without a DICOM series")
        found = [_DicomSeries(uid, list(reader.GetGDCMSeriesFileNames(folder, uid)), series_in_folder=len(uids))
                 for uid in uids]
        for candidate in found:
            candidate.description = dicom_tag(candidate.files[0], "0008|103e")
        found.sort(key=lambda candidate: -len(candidate.files))  # most slices first: the likely choice
        listing = "; ".join(candidate.label() for candidate in found)
        if wanted:
            chosen = next((candidate for candidate in found if candidate.uid == wanted.strip()), None)
            if chosen is None:
                raise VolumeError(f"{folder} holds no DICOM series {wanted}; it holds: {listing}")
        else:
            chosen = found[0]
            if len(found) > 1:
                chosen.notes.append(f"{folder} holds {len(found)} DICOM series; read {chosen.label()}; choose "
                                    f"another with --series UID: {listing}")
        reader.SetFileNames(chosen.files)
        reader.MetaDataDictionaryArrayUpdateOn()
        image = reader.Execute()
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(warnings)
    chosen.positions_lps = _slice_positions(reader, len(chosen.files))
    return image, chosen


def dicom_tag(filename, tag: str) -> str:
    """The value of ``tag`` (``"gggg|eeee"``, e.g. ``"0008|0060"``) in the header of the DICOM file
    ``filename``, stripped; "" when the file has no such tag or SimpleITK cannot read its header."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(filename)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return ""
    return reader.GetMetaData(tag).strip() if reader.HasMetaDataKey(tag) else ""


def _slice_positions(reader, count):
    """ImagePositionPatient of every slice read (LPS mm), or None when some slice lacks it."""
    positions = []
    for index in range(count):
        if not reader.HasMetaDataKey(index, "0020|0032"):
            return None
        try:
            positions.append([float(v) for v in reader.GetMetaData(index, "0020|0032").split("\\")])
        except ValueError:
            return None
    positions = np.asarray(positions, dtype=float)
    return positions if positions.shape == (count, 3) and np.isfinite(positions).all() else None


#: Slice gaps that differ from the usual spacing by less than this fraction count as even.
_SPACING_TOLERANCE = 0.02
#: Widest gap, in usual slice spacings, filled by interpolation (two missing slices in a row).
_MAX_GAP_STEPS = 3.0


def _even_slices(array, ijk_to_ras, positions_lps, name, notes):
    """Place the slices of a DICOM series by their own positions, on evenly spaced slices.

    ITK spaces a series' slices evenly whatever their positions say, so with a missing slice or a
    change of spacing every slice beyond it would sit at the wrong place. Uneven slices are
    resampled (linear interpolation between the two nearest slices) and reported in ``notes``;
    repeated positions, sideways shifts (gantry tilt) and gaps too wide to fill are refused.

    Returns
    -------
    array, ijk_to_ras
        The voxels (K, J, I) on evenly spaced slices and their IJK-to-RAS matrix.
    """
    count = len(positions_lps)
    positions = positions_lps * np.array([-1.0, -1.0, 1.0])  # RAS, like the matrix
    in_plane = ijk_to_ras[:3, :2]
    normal = np.cross(in_plane[:, 0], in_plane[:, 1])
    normal /= np.linalg.norm(normal)
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    if np.any(order != np.arange(count)):  # files not in slice order: put them in it
        array, positions, along = array[order], positions[order], along[order]
    along = along - along[0]
    gaps = np.diff(along)
    step = float(np.median(gaps))
    where = _gap_position(positions, normal)
    if step <= 0 or gaps.min() <= 1e-3 * max(step, 1e-3):
        raise VolumeError(f"{name}: several slices lie at the same position (near {where(int(np.argmin(gaps)))}); "
                          "the series holds more than one volume (echoes, time points or repeats), VoteMI reads "
                          "one 3D volume; export one of them as its own series")
    sideways = np.linalg.norm((positions - positions[0]) - np.outer(along, normal), axis=1).max()
    if sideways > 0.5 * float(np.linalg.norm(in_plane, axis=0).min()):
        raise VolumeError(f"{name}: the slices are shifted sideways by up to {sideways:.3g} mm along the stack "
                          "(tilted gantry?); resample the series onto an orthogonal grid first")
    uneven = np.abs(gaps - step) > _SPACING_TOLERANCE * step + 1e-3
    if not uneven.any():
        matrix = ijk_to_ras.copy()
        matrix[:3, 2] = normal * (along[-1] / (count - 1))
        matrix[:3, 3] = positions[0]
        return array, matrix
    widest = int(np.argmax(gaps))
    if gaps[widest] > _MAX_GAP_STEPS * step:
        raise VolumeError(f"{name}: a gap of {gaps[widest]:.3g} mm between slices near {where(widest)}, where the "
                          f"other slices are {step:.3g} mm apart: about {round(gaps[widest] / step) - 1} slices are "
                          "missing, too many to interpolate; export the complete series")
    slices = int(round(along[-1] / step)) + 1
    even_step = along[-1] / (slices - 1)
    targets = np.arange(slices) * even_step
    upper = np.clip(np.searchsorted(along, targets, side="right"), 1, count - 1)
    weights = (targets - along[upper - 1]) / gaps[upper - 1]
    even = np.empty((slices, *array.shape[1:]), dtype=np.float32)
    for k, (above, weight) in enumerate(zip(upper, weights)):  # slice by slice: no volume-sized temporaries
        np.multiply(array[above - 1], np.float32(1 - weight), out=even[k])
        even[k] += np.float32(weight) * array[above]
    notes.append(f"{name}: slices are not evenly spaced ({int(uneven.sum())} of {count - 1} gaps differ from the "
                 f"usual {step:.3g} mm, the widest {gaps[widest]:.3g} mm near {where(widest)}: missing slices or "
                 f"variable spacing); resampled to {slices} slices {even_step:.3g} mm apart by linear interpolation")
    matrix = ijk_to_ras.copy()
    matrix[:3, 2] = normal * even_step
    matrix[:3, 3] = positions[0]
    return even, matrix


def _gap_position(positions, normal):
    """A function naming where gap ``n`` (between slices n and n+1) lies, e.g. "S +12.5 mm"."""
    axis = int(np.argmax(np.abs(normal)))

    def where(n: int) -> str:
        return f"{'RAS'[axis]} {(positions[n, axis] + positions[n + 1, axis]) / 2:+.1f} mm"
    return where


def _stem(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    for suffix in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".mgz", ".gz"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base
