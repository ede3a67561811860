"""Slices rendered as a radiologist sees them in Slicer: display orientation, square pixels, windowing."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from .geometry import canonical_array, display_pixel_spacing, display_slice
from .modality import detect_modality
from .names import AUTO, CT_PRESET_NAMES, CT_PRESETS, THREE_WINDOW  # noqa: F401 (render's names)

#: Intensity percentiles used for the default window of MRI volumes.
DEFAULT_PERCENTILES = (0.5, 99.5)


def percentile_window(array: np.ndarray, percentiles=DEFAULT_PERCENTILES, max_samples: int = 2_000_000):
    """(low, high) window from intensity percentiles of the non-background voxels.

    Background is taken as the most frequent lowest value (zero padding, air after skull
    stripping); a strided sample keeps this fast on large volumes.
    """
    flat = np.asarray(array).ravel()
    step = max(1, flat.size // max_samples)
    sample = flat[::step]
    floor = sample.min()
    foreground = sample[sample > floor]
    if foreground.size < 0.01 * sample.size:
        foreground = sample
    low, high = np.percentile(foreground, percentiles)
    if high <= low:
        low, high = float(sample.min()), float(sample.max())
    return float(low), float(high)


def apply_window(image: np.ndarray, window) -> np.ndarray:
    """Map intensities to uint8 with a (low, high) window."""
    low, high = window
    scaled = (np.asarray(image, dtype=np.float32) - low) * (255.0 / max(high - low, 1e-12))
    return np.clip(scaled, 0, 255).astype(np.uint8)


def slice_pixels(volume, plane: str, index: int) -> np.ndarray:
    """Raw voxel values of slice ``index`` (ascending RAS order) of ``plane``, display-oriented."""
    canonical = canonical_array(volume.array, volume.ijk_to_ras)
    return np.ascontiguousarray(display_slice(canonical, plane, index))


def to_square_pixels(image, pixel_spacing, long_side: int | None = None):
    """Resize a PIL image so that pixels are square in mm, optionally to a given long side."""
    from PIL import Image

    row_mm, col_mm = pixel_spacing
    height_mm, width_mm = image.height * row_mm, image.width * col_mm
    if long_side is None:
        finest = min(row_mm, col_mm)
        width, height = width_mm / finest, height_mm / finest
    else:
        scale = long_side / max(height_mm, width_mm)
        width, height = width_mm * scale, height_mm * scale
    size = (max(1, int(round(width))), max(1, int(round(height))))
    if size == image.size:
        return image
    return image.resize(size, Image.Resampling.BICUBIC)


def png_bytes(image) -> bytes:
    """Encode a PIL image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_selection_pngs(volume, result, folder, windowing: Windowing | None = None,
                        long_side: int | None = None) -> list:
    """Write every selected slice as ``<volume>_<ID>_<plane>_<position>mm.png``; return the paths.

    ``windowing`` defaults to :func:`choose_windowing` for the region the selection detected (a CT
    in its region's preset window, an MRI in its intensity percentiles).
    """
    from .outputs import check_output_folder, write_atomic

    check_output_folder(folder, "PNG folder")
    if windowing is None:
        windowing = choose_windowing(volume, region=(result.region or {}).get("name"))
    stem = volume.name or "volume"
    paths = []
    for chosen in result.selected():
        image = render_windowed(volume, chosen.plane, chosen.index, windowing, long_side=long_side)
        name = f"{stem}_{chosen.label}_{chosen.plane}_{chosen.position_mm:+.1f}mm.png"
        path = os.path.join(folder, name)
        write_atomic(path, png_bytes(image), what="PNG")
        paths.append(path)
    return paths


#: Three windows packed into the R, G and B channels (wide, soft tissue, brain), as (low, high) HU;
#: the CT recipe used by MedGemma.
THREE_WINDOWS = ((-1024.0, 1024.0), (-135.0, 215.0), (0.0, 80.0))
#: The CT window that fits each region (:mod:`VoteMILib.cues.regions`): the brain window for the head,
#: the lung window for the chest (nodules and masses against aerated lung), soft tissue elsewhere.
REGION_PRESETS = {"head": "brain", "chest": "lung", "body": "soft_tissue"}
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


def preset_window(name: str) -> tuple:
    """(low, high) HU of a CT preset name from :data:`CT_PRESETS`."""
    key = name.strip().lower().replace(" ", "_").replace("-", "_")
    if key not in CT_PRESETS:
        raise ValueError(f"unknown CT preset '{name}'; choose from {', '.join(CT_PRESET_NAMES)}")
    level, width = CT_PRESETS[key]
    return (level - width / 2, level + width / 2)


def choose_windowing(volume, modality: str = "auto", ct_preset: str | None = AUTO, window=None,
                     region: str | None = None) -> Windowing:
    """Pick the window(s) for a volume.

    CT volumes use ``ct_preset`` when one is given (``"three_window"`` gives RGB images; ``"auto"``
    the preset of the region, :data:`REGION_PRESETS`); otherwise, and for MRI, ``window`` (e.g.
    Slicer's display window/level) is used when given, else intensity percentiles.

    Parameters
    ----------
    modality : {"auto", "CT", "MRI"}
    ct_preset : str or None
        A name from :data:`CT_PRESET_NAMES`, or None to treat CT like MRI.
    window : (float, float), optional
        Explicit (low, high) window.
    region : str, optional
        "head", "chest" or "body" for ``ct_preset="auto"`` (e.g. ``SelectionResult.region["name"]``);
        detected from the volume when not given.
    """
    modality = normalize_modality(modality)
    if modality == "auto":
        modality = detect_modality(volume)
    if modality == "CT" and ct_preset:
        key = ct_preset.strip().lower().replace(" ", "_").replace("-", "_")
        if key == THREE_WINDOW:
            return Windowing("CT", THREE_WINDOWS, THREE_WINDOW)
        if key == AUTO:
            key = REGION_PRESETS[region or detect_volume_region(volume, "CT")]
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


def render_windowed(volume, plane: str, index: int, windowing: Windowing, long_side: int | None = None):
    """A slice as a PIL image in display orientation with square pixels: grey ("L") for one
    window, RGB for three (R, G and B each in its window)."""
    from PIL import Image

    pixels = slice_pixels(volume, plane, index)
    channels = [apply_window(pixels, window) for window in windowing.windows]
    if len(channels) == 1:
        image = Image.fromarray(channels[0], mode="L")
    else:
        image = Image.fromarray(np.ascontiguousarray(np.stack(channels, axis=-1)), mode="RGB")
    return to_square_pixels(image, display_pixel_spacing(volume.ijk_to_ras, plane), long_side)


def render_rgb(volume, plane: str, index: int, windowing: Windowing, long_side: int | None = 896):
    """:func:`render_windowed` as an RGB image (a grey image has the same value in R, G and B)."""
    return render_windowed(volume, plane, index, windowing, long_side).convert("RGB")


def detect_volume_region(volume, modality: str) -> str:
    """The region name of a volume on its own (for callers without a selection result)."""
    from .preprocess import make_working_grid
    from .cues import detect_region

    return detect_region(make_working_grid(volume), modality).name
