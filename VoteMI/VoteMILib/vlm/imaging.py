"""Images for the model: CT detection, CT window presets, three-window RGB, slice matching across sequences.

Slices are rendered in Slicer's display orientation with square pixels by :mod:`VoteMILib.render`;
this module chooses the intensity window(s) and produces RGB images of a given long side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..geometry import display_pixel_spacing, plane_geometry
from ..render import apply_window, percentile_window, png_bytes, slice_pixels, to_square_pixels

#: CT window presets as (level, width) in Hounsfield units.
CT_PRESETS = {
    "brain": (40.0, 80.0),
    "soft_tissue": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
}
#: Three windows packed into the R, G and B channels (wide, soft tissue, brain), as (low, high) HU;
#: the CT recipe used by MedGemma.
THREE_WINDOWS = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))
THREE_WINDOW = "three_window"
#: Every accepted ``ct_preset`` value.
CT_PRESET_NAMES = (*CT_PRESETS, THREE_WINDOW)
MODALITIES = ("auto", "CT", "MRI")


@dataclass(frozen=True)
class Windowing:
    """How one volume's intensities become pixels.

    Attributes
    ----------
    modality : str
        "CT" or "MRI".
    windows : tuple of (float, float)
        One (low, high) window for a grey image, three for an RGB image (R, G, B).
    source : str
        Where the window comes from: "preset:brain", "three_window", "display", "percentiles".
    """

    modality: str
    windows: tuple
    source: str

    def to_dict(self) -> dict:
        return {"modality": self.modality, "source": self.source,
                "windows": [[round(float(low), 3), round(float(high), 3)] for low, high in self.windows]}


def detect_modality(volume) -> str:
    """Guess "CT" or "MRI" from the intensities.

    A CT in Hounsfield units has air near -1000 HU around or inside the body, a floor no lower
    than the -3024 HU padding scanners write, and no values beyond a few thousand HU. MRI
    intensities are arbitrary but not negative by hundreds. A volume's own ``metadata["modality"]``
    (e.g. from DICOM) wins.
    """
    declared = str(getattr(volume, "metadata", {}).get("modality", "")).upper()
    if declared in ("CT", "MR", "MRI"):
        return "CT" if declared == "CT" else "MRI"
    flat = np.asarray(volume.array).ravel()
    sample = flat[:: max(1, flat.size // 1_000_000)]
    low, p1, p99 = np.percentile(sample, (0, 1, 99))
    looks_ct = low >= -3100 and p1 <= -500 and p99 <= 4000 and np.mean(sample <= -900) >= 0.01
    return "CT" if looks_ct else "MRI"


def preset_window(name: str) -> tuple:
    """(low, high) HU of a CT preset name from :data:`CT_PRESETS`."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in CT_PRESETS:
        raise ValueError(f"unknown CT preset '{name}'; choose from {', '.join(CT_PRESET_NAMES)}")
    level, width = CT_PRESETS[key]
    return (level - width / 2, level + width / 2)


def choose_windowing(volume, modality: str = "auto", ct_preset: str | None = "brain", window=None) -> Windowing:
    """Pick the window(s) for a volume.

    CT volumes use ``ct_preset`` when one is given (``"three_window"`` gives RGB images);
    otherwise, and for MRI, ``window`` (e.g. Slicer's display window/level) is used when given,
    else intensity percentiles.

    Parameters
    ----------
    modality : {"auto", "CT", "MRI"}
    ct_preset : str or None
        A name from :data:`CT_PRESET_NAMES`, or None to treat CT like MRI.
    window : (float, float), optional
        Explicit (low, high) window.
    """
    modality = normalize_modality(modality)
    if modality == "auto":
        modality = detect_modality(volume)
    if modality == "CT" and ct_preset:
        key = ct_preset.strip().lower().replace(" ", "_").replace("-", "_")
        if key == THREE_WINDOW:
            return Windowing("CT", THREE_WINDOWS, THREE_WINDOW)
        return Windowing("CT", (preset_window(key),), f"preset:{key}")
    if window is not None:
        low, high = (float(value) for value in window)
        if not high > low:
            raise ValueError(f"invalid window ({low:g}, {high:g}): high must exceed low")
        return Windowing(modality, ((low, high),), "display")
    return Windowing(modality, (percentile_window(volume.array),), "percentiles")


def normalize_modality(modality: str) -> str:
    """Map user spellings ("ct", "MR", "mri", "Auto") to one of :data:`MODALITIES`."""
    key = (modality or "auto").strip().upper()
    if key in ("MR", "MRI"):
        return "MRI"
    if key in ("CT", "AUTO"):
        return key if key == "CT" else "auto"
    raise ValueError(f"unknown modality '{modality}'; choose auto, CT or MRI")


def render_rgb(volume, plane: str, index: int, windowing: Windowing, long_side: int | None = 896):
    """A slice as an RGB PIL image in display orientation, square pixels, long side ``long_side``.

    One window gives a grey image (the same value in R, G and B); three windows fill R, G and B.
    """
    from PIL import Image

    pixels = slice_pixels(volume, plane, index)
    channels = [apply_window(pixels, window) for window in windowing.windows]
    if len(channels) == 1:
        image = Image.fromarray(channels[0], mode="L").convert("RGB")
    else:
        image = Image.fromarray(np.ascontiguousarray(np.stack(channels, axis=-1)), mode="RGB")
    return to_square_pixels(image, display_pixel_spacing(volume.ijk_to_ras, plane), long_side)


def render_png(volume, plane: str, index: int, windowing: Windowing, long_side: int | None = 896):
    """:func:`render_rgb` encoded as PNG; returns (png bytes, (width, height))."""
    image = render_rgb(volume, plane, index, windowing, long_side)
    return png_bytes(image), image.size


def nearest_slice(volume, plane: str, position_mm: float):
    """Slice of ``volume`` in ``plane`` closest to a RAS position.

    Returns
    -------
    (int, float) or None
        Slice number (ascending position) and its position, or None when the position lies
        outside the volume by more than one slice spacing.
    """
    geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
    positions = geometry.positions_mm
    index = int(np.argmin(np.abs(positions - position_mm)))
    spacing = float(np.median(np.abs(np.diff(positions)))) if len(positions) > 1 else 0.0
    if abs(positions[index] - position_mm) > max(spacing, 1e-3):
        return None
    return index, float(positions[index])
