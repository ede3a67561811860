"""Images for the model: slices in the CT window or MRI window chosen by :mod:`VoteMILib.render`,
as RGB PNGs of a given long side, and slice matching across sequences.
"""

from __future__ import annotations

import numpy as np

from ..geometry import plane_geometry
from ..modality import detect_modality
from ..render import (CT_PRESET_NAMES, CT_PRESETS, MODALITIES, REGION_PRESETS, THREE_WINDOW, THREE_WINDOWS,
                      Windowing, choose_windowing, normalize_modality, png_bytes, preset_window, render_rgb)

__all__ = ["CT_PRESETS", "CT_PRESET_NAMES", "MODALITIES", "REGION_PRESETS", "THREE_WINDOW", "THREE_WINDOWS",
           "Windowing", "choose_windowing", "detect_modality", "nearest_slice", "normalize_modality",
           "preset_window", "render_png", "render_rgb"]


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
