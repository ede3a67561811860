"""Helpers shared by the engine tests (test_engine_*.py): real cases, cached loads and selections,
and writers for synthetic or deliberately broken image files.

Loads and selections are cached per test session (``functools.lru_cache``) because a selection on a
240x240x155 scan takes a second or two; callers must not modify what they get back.
"""

from __future__ import annotations

import csv
import functools
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

#: ../shared/data beside the repository (the same layout in CI).
DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
#: Colin27 T1 from Debian's mricron-data.
COLIN27 = Path("/usr/share/mricron/templates/ch2.nii.gz")
#: The case most tests use: 240x240x155, 1 mm, stored LPS, with lesion mask and FLAIR.
MAIN_CASE = "tcga_du_7294"


def cases() -> dict:
    """Rows of ../shared/data/cases.tsv by case name, paths made absolute."""
    table = DATA / "cases.tsv"
    assert table.exists(), f"real test data missing: {table} (the repository must sit beside shared/)"
    rows = {}
    with open(table, newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            base = DATA / row["case"]
            rows[row["case"]] = {
                "disease": row["disease"],
                "image": base / row["image"],
                "mask": base / row["mask"] if (row.get("mask") or "").strip() else None,
                "extra": [base / e for e in (row.get("extra") or "").split(",") if e.strip()],
            }
    return rows


def case_names() -> list:
    return sorted(cases())


@functools.lru_cache(maxsize=None)
def volume(case: str):
    """The main image of a real case, loaded once per session."""
    from VoteMILib.volumes import load_volume

    return load_volume(cases()[case]["image"])


@functools.lru_cache(maxsize=None)
def extra_volume(case: str, number: int = 0):
    from VoteMILib.volumes import load_volume

    return load_volume(cases()[case]["extra"][number])


@functools.lru_cache(maxsize=None)
def selection(case: str, planes=("axial", "coronal", "sagittal"), top_k: int = 3, seed: int = 0):
    """Default selection on a real case, computed once per session."""
    from VoteMILib.selection import select_slices

    return select_slices(volume(case), planes=planes, top_k=top_k, seed=seed)


def physical_ras(image, continuous_index) -> np.ndarray:
    """RAS point of a (continuous) voxel index, computed by ITK itself (LPS) and flipped to RAS."""
    x, y, z = image.TransformContinuousIndexToPhysicalPoint([float(c) for c in continuous_index])
    return np.array([-x, -y, z])


def votemi_command() -> list:
    """The installed ``votemi`` console script (the real entry point), or the module as a fallback."""
    script = shutil.which("votemi")
    if script:
        return [script]
    return [sys.executable, "-c", "import sys; from VoteMILib.cli import main; sys.exit(main())"]


def run_votemi(*args, timeout: float = 300) -> subprocess.CompletedProcess:
    # Explicit UTF-8: the MRML libraries switch this process's locale to "C" (ASCII) once loaded.
    return subprocess.run(votemi_command() + [str(a) for a in args], capture_output=True, text=True,
                          encoding="utf-8", errors="replace", timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def nifti1_bytes(size_ijk, datatype: int = 16, bitpix: int = 32, data: bytes = b"", spacing=(1.0, 1.0, 1.0)):
    """A single-file NIfTI-1 (.nii): the 348-byte header, 4 bytes of extension flag, then ``data``.

    Written by hand so that a header can claim more voxels than the file holds (datatype 16 is
    float32, 2 is uint8). The sform maps voxels to LPS-stored RAS like most scanners' output.
    """
    header = bytearray(352)
    struct.pack_into("<i", header, 0, 348)
    dims = [len(size_ijk)] + [int(n) for n in size_ijk] + [1] * (7 - len(size_ijk))
    struct.pack_into("<8h", header, 40, *dims)
    struct.pack_into("<hh", header, 70, datatype, bitpix)
    pixdim = [1.0] + [float(s) for s in spacing] + [1.0] * (7 - len(spacing))
    struct.pack_into("<8f", header, 76, *pixdim)
    struct.pack_into("<f", header, 108, 352.0)  # vox_offset
    struct.pack_into("<f", header, 112, 1.0)  # scl_slope
    struct.pack_into("<hh", header, 252, 0, 1)  # qform_code, sform_code
    struct.pack_into("<4f", header, 280, -spacing[0], 0.0, 0.0, 0.0)
    struct.pack_into("<4f", header, 296, 0.0, -spacing[1], 0.0, 0.0)
    struct.pack_into("<4f", header, 312, 0.0, 0.0, spacing[2], 0.0)
    header[344:348] = b"n+1\0"
    return bytes(header) + data


def write_array(path, array_kji, spacing=(1.0, 1.0, 1.0), vector: bool = False) -> Path:
    """Write a numpy array (K, J, I[, components]) with SimpleITK; the format follows the suffix."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.asarray(array_kji), isVector=vector)
    if image.GetDimension() == len(spacing):
        image.SetSpacing([float(s) for s in spacing])
    sitk.WriteImage(image, os.fspath(path))
    return Path(path)


#: UID root of the DICOM files the tests write.
DICOM_ROOT = "1.2.826.0.1.3680043.8.498.7313"


def dicom_series_uid(number: int = 2) -> str:
    return f"{DICOM_ROOT}.{number}"


def write_dicom_series(image, folder, number: int = 2, description: str = "", slices=None, prefix: str = "slice"):
    """One 2D DICOM file per K slice of a SimpleITK image, with the tags a reader sorts by.

    ``number`` makes the SeriesInstanceUID (:func:`dicom_series_uid`); ``slices`` (K indices, default
    all) leaves slices out, so the series can have gaps or uneven spacing while every file keeps
    its true position.
    """
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    d = image.GetDirection()
    orientation = "\\".join(f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7]))
    for n, k in enumerate(range(image.GetDepth()) if slices is None else slices):
        plane = image[:, :, int(k)]
        tags = {"0008|0060": "MR", "0020|000d": DICOM_ROOT + ".1", "0020|000e": dicom_series_uid(number),
                "0008|0018": f"{DICOM_ROOT}.3.{number}.{n + 1}", "0020|0013": str(n + 1), "0020|0037": orientation,
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, int(k)))),
                "0018|0050": f"{image.GetSpacing()[2]:.6f}", "0008|103e": description}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(os.fspath(folder / f"{prefix}{n:03d}.dcm"))
        writer.Execute(plane)


def head_phantom(shape_kji=(40, 48, 44), seed: int = 0) -> np.ndarray:
    """A smooth ellipsoid 'head' with texture, enough foreground for selection to run on."""
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[np.linspace(-1, 1, n) for n in shape_kji], indexing="ij")
    inside = (k ** 2 + j ** 2 + i ** 2) < 0.8
    texture = rng.normal(0, 0.05, shape_kji)
    return (inside * (1.0 + 0.3 * np.sin(6 * i) * np.cos(4 * j) + texture)).astype(np.float32) * 1000
