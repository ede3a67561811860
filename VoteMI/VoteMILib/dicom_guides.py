"""DICOM segmentations as guides: an RTSTRUCT rasterised onto the image grid; a DICOM SEG named, with a converter.

An RTSTRUCT holds each structure as closed planar contours in patient coordinates (LPS mm); they are filled slice
by slice on the image's voxel grid (Pillow draws the polygons), each structure ("ROI") one label in the order the
file lists them. A DICOM SEG needs a reader of its multi-frame encoding that Slicer does not ship; VoteMI names the
tools that turn it into a label map instead.
"""

from __future__ import annotations

import os

import numpy as np

#: What to tell the user when a DICOM segmentation cannot be read here.
CONVERTERS = ("load it in Slicer's DICOM module (the QuantitativeReporting extension reads SEG) and use the "
              "segmentation node, or convert it to a label map with `segimage2itkimage` (dcmqi) or "
              "`plastimatch convert`")


class GuideError(ValueError):
    """A mask, label or point that cannot guide the selection; the message is one line for the user."""


def dicom_modality(path) -> str:
    """Modality (0008,0060) of a DICOM file, "" if it is not one."""
    try:
        import pydicom
    except ImportError:
        from .volumes import dicom_tag

        return dicom_tag(path, "0008|0060")
    try:
        header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["Modality"])
    except Exception:  # pydicom raises many types for files that are not DICOM
        return ""
    return str(getattr(header, "Modality", "") or "")


def find_dicom_guide(path):
    """(file, modality) of the RTSTRUCT or SEG at ``path`` (a file, or the first in a folder), or None."""
    if os.path.isdir(path):
        files = sorted(os.path.join(path, name) for name in os.listdir(path))
        files = [name for name in files if os.path.isfile(name)]
    elif path.lower().endswith((".dcm", ".dicom")) or "." not in os.path.basename(path):
        files = [path]
    else:
        return None
    for name in files:
        modality = dicom_modality(name)
        if modality in ("RTSTRUCT", "SEG"):
            return name, modality
    return None


def read_dicom_guide(path, volume):
    """The label map (K, J, I; int32) of a DICOM RTSTRUCT at ``path`` on ``volume``'s grid, None if ``path`` is not
    a DICOM segmentation.

    Raises
    ------
    GuideError
        For a DICOM SEG, an RTSTRUCT without contours, or one that cannot be read (no pydicom).
    """
    found = find_dicom_guide(os.fspath(path))
    if found is None:
        return None
    name, modality = found
    if modality == "SEG":
        raise GuideError(f"{name} is a DICOM SEG, which VoteMI cannot read; {CONVERTERS}")
    try:
        import pydicom
    except ImportError:
        raise GuideError(f"{name} is an RTSTRUCT; reading it needs pydicom (pip install pydicom), or "
                         f"{CONVERTERS}") from None
    return rasterise_rtstruct(pydicom.dcmread(name), volume, name)


def rasterise_rtstruct(dataset, volume, name: str = "RTSTRUCT") -> np.ndarray:
    """Fill every contour of every ROI of an RTSTRUCT dataset on ``volume``'s grid; ROI n (file order) is label n.

    Contours are filled with even-odd parity within a structure, so that a contour inside another (a hole)
    stays empty, as the standard intends for CLOSED_PLANAR contours on one plane.
    """
    from PIL import Image, ImageDraw

    from .geometry import ras_to_ijk

    rois = {int(item.ROINumber): str(getattr(item, "ROIName", "") or f"ROI {item.ROINumber}")
            for item in getattr(dataset, "StructureSetROISequence", [])}
    labels = np.zeros(volume.array.shape, dtype=np.int32)
    size_i, size_j = volume.size_ijk[0], volume.size_ijk[1]
    filled = 0
    for number, contour_set in enumerate(getattr(dataset, "ROIContourSequence", []), start=1):
        slices = {}
        for contour in getattr(contour_set, "ContourSequence", []):
            points = _contour_points(contour)
            if len(points) < 3:
                continue
            ras = points * np.array([-1.0, -1.0, 1.0])  # DICOM patient space is LPS
            ijk = ras_to_ijk(volume.ijk_to_ras, ras)
            k = int(np.round(np.median(ijk[:, 2])))
            if 0 <= k < volume.array.shape[0]:
                slices.setdefault(k, []).append([(float(i), float(j)) for i, j in ijk[:, :2]])
        for k, polygons in slices.items():
            parity = np.zeros((size_j, size_i), dtype=bool)
            for polygon in polygons:
                canvas = Image.new("1", (size_i, size_j), 0)
                ImageDraw.Draw(canvas).polygon(polygon, outline=1, fill=1)
                parity ^= np.array(canvas, dtype=bool)
            labels[k][parity] = number
            filled += int(parity.sum())
    if not filled:
        raise GuideError(f"{name}: no contour of {', '.join(rois.values()) or 'its structures'} lies on the image's "
                         "slices; is it the RTSTRUCT of another series?")
    return labels


def _contour_points(contour) -> np.ndarray:
    """ContourData as (n, 3) LPS points; parsed from the raw text, which is much faster than pydicom's
    decimal-string values for contours of thousands of points."""
    raw = contour.get_item("ContourData")
    value = getattr(raw, "value", None)
    if isinstance(value, (bytes, bytearray)):
        numbers = np.array(bytes(value).replace(b"\x00", b" ").split(b"\\"), dtype=float)
    else:
        numbers = np.asarray(contour.ContourData, dtype=float)
    return numbers[:len(numbers) // 3 * 3].reshape(-1, 3)


def rtstruct_names(path) -> dict:
    """Label -> ROI name of an RTSTRUCT read by :func:`rasterise_rtstruct` ({} for other files)."""
    found = find_dicom_guide(os.fspath(path))
    if found is None or found[1] != "RTSTRUCT":
        return {}
    import pydicom

    dataset = pydicom.dcmread(found[0], stop_before_pixels=True)
    rois = {int(item.ROINumber): str(getattr(item, "ROIName", "") or "")
            for item in getattr(dataset, "StructureSetROISequence", [])}
    return {number: rois.get(int(getattr(contour_set, "ReferencedROINumber", 0)), "") or f"label {number}"
            for number, contour_set in enumerate(getattr(dataset, "ROIContourSequence", []), start=1)}
