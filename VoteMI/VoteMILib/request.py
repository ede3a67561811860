"""What one selection run is asked to do, as one object owned by the engine.

``votemi select`` and ``describe`` build a :class:`SelectionRequest` from their command line
(:func:`VoteMILib.cli.arguments.selection_request`), the batch runner from its settings and a case
(:meth:`VoteMILib.batch.SelectSettings.request`), a script by hand; :func:`VoteMILib.run.run_selection` runs it.
No argparse here: the engine never sees a parsed command line.
"""

from __future__ import annotations

from dataclasses import dataclass

from .names import PLANES


def window_settings(modality: str = "auto", ct_preset: str | None = None, window=None) -> tuple:
    """(modality, CT preset or None, window or None) of the ``--modality``, ``--ct-preset`` and ``--window``
    options.

    Parameters
    ----------
    modality : str
        ``auto``, ``CT`` or ``MRI``.
    ct_preset : str or None
        A CT window preset, ``none`` for percentiles, or None for the default: ``auto``, or ``none`` when a
        window is given (an explicit window without a preset windows CT too).
    window : sequence of two floats or None
        (low, high) intensity window.
    """
    preset = ct_preset or ("none" if window else "auto")
    return modality, None if preset == "none" else preset, tuple(window) if window else None


@dataclass(frozen=True)
class SelectionRequest:
    """One selection: the image, how many slices of which planes, the guide and the windowing of its PNGs.

    Parameters
    ----------
    image : str
        3D image file, or a folder of DICOM files.
    series : str or None
        DICOM series UID to read when ``image`` is a folder holding several.
    extras : tuple of str
        Other sequences of the same patient that vote with the image.
    volume_names : tuple of str
        Names of the image and then of each extra as reports show them (default: their file names).
    planes : tuple of str
    slices_per_plane : int
        Slices picked per plane (``--slices-per-plane``; stored selections call it ``top_k``).
    seed : int
    mode : str or None
        ``findings`` or ``representative``; None means ``findings`` without a guide and the guided slices only
        with one.
    encoder : str or None
        Trained patch encoder file; None for PCA.
    selector : str or None
        Generic selector model file (experimental); None for the vote.
    mask : str or None
        Label map or DICOM RTSTRUCT of the guide segments.
    labels : tuple of int or None
        Labels of ``mask`` to show, in order; None for all.
    label_names : tuple of (int, str)
        Segment names by label.
    points : tuple of (float, float, float)
        Guide points, RAS mm.
    modality, ct_preset, window
        The windowing of rendered slices, as :func:`window_settings` reads them.
    """

    image: str
    series: str | None = None
    extras: tuple = ()
    volume_names: tuple = ()
    planes: tuple = PLANES
    slices_per_plane: int = 3
    seed: int = 0
    mode: str | None = None
    encoder: str | None = None
    selector: str | None = None
    mask: str | None = None
    labels: tuple | None = None
    label_names: tuple = ()
    points: tuple = ()
    modality: str = "auto"
    ct_preset: str | None = None
    window: tuple | None = None

    def windowing(self) -> tuple:
        """(modality, CT preset or None, window or None) the slices of this selection are rendered with."""
        return window_settings(self.modality, self.ct_preset, self.window)
