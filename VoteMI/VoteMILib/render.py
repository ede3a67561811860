"""Slices rendered as a radiologist sees them in Slicer: display orientation, square pixels, windowing."""

from __future__ import annotations

import io
import os

import numpy as np

from .geometry import canonical_array, display_pixel_spacing, display_slice

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


def render_slice(volume, plane: str, index: int, window=None, long_side: int | None = None):
    """A slice as an 8-bit grey PIL image, as shown in Slicer's slice view of that plane.

    Parameters
    ----------
    volume : Volume
    plane : str
    index : int
        Slice number in ascending RAS position (``PlaneResult.positions_mm`` order).
    window : (float, float), optional
        Intensity window; percentiles of the volume by default.
    long_side : int, optional
        Resize so the longer side has this many pixels; otherwise keep the finest voxel size.
    """
    from PIL import Image

    if window is None:
        window = percentile_window(volume.array)
    pixels = apply_window(slice_pixels(volume, plane, index), window)
    image = Image.fromarray(pixels, mode="L")
    return to_square_pixels(image, display_pixel_spacing(volume.ijk_to_ras, plane), long_side)


def png_bytes(image) -> bytes:
    """Encode a PIL image as PNG."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_selection_pngs(volume, result, folder, window=None, long_side: int | None = None) -> list:
    """Write every selected slice as ``<volume>_<ID>_<plane>_<position>mm.png``; return the paths."""
    from .outputs import check_output_folder, write_atomic

    check_output_folder(folder, "PNG folder")
    if window is None:
        window = percentile_window(volume.array)
    stem = volume.name or "volume"
    paths = []
    for chosen in result.selected():
        image = render_slice(volume, chosen.plane, chosen.index, window=window, long_side=long_side)
        name = f"{stem}_{chosen.label}_{chosen.plane}_{chosen.position_mm:+.1f}mm.png"
        path = os.path.join(folder, name)
        write_atomic(path, png_bytes(image), what="PNG")
        paths.append(path)
    return paths
