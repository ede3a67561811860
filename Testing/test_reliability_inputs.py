"""Inputs at the edges: thin, wide and very anisotropic volumes, and DICOM folders that are not one
clean series (several series, a missing slice, uneven spacing). Built at test time from real scans.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import cli
from VoteMILib.geometry import PLANES, plane_geometry
from VoteMILib.volumes import VolumeError, ijk_to_ras_from_image, load_volume

sitk = pytest.importorskip("SimpleITK")


def resampled_colin27(path, size, spacing):
    """Colin27 resampled onto a grid of ``size`` voxels of ``spacing`` mm centred on the head (int16)."""
    source = sitk.ReadImage(os.fspath(ef.COLIN27), sitk.sitkFloat32)
    centre = source.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in source.GetSize()])
    direction = np.array(source.GetDirection()).reshape(3, 3)
    origin = np.array(centre) - direction @ ((np.array(size) - 1) / 2 * np.array(spacing))
    image = sitk.Resample(source, [int(n) for n in size], sitk.Transform(), sitk.sitkLinear, origin.tolist(),
                          [float(s) for s in spacing], source.GetDirection(), 0.0, sitk.sitkInt16)
    sitk.WriteImage(image, os.fspath(path))
    return image


def select(*args):
    """``votemi select`` in this process with every numpy warning raised as an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        return cli.main(["select", *map(str, args)])


# --- thin, wide and anisotropic volumes -----------------------------------------------------------


@pytest.mark.parametrize("name, size, spacing, words", [
    ("thin", (256, 256, 5), (0.9, 0.9, 0.3), ("1.5 mm along S", "5 voxels of 0.3 mm", "at least 16 mm")),
    ("wide", (4000, 4000, 3), (1.0, 1.0, 1.0), ("3 mm along S", "4000 mm field of view", "222 mm patches",
                                                 "crop it")),
])
def test_too_thin_volumes_are_refused_in_one_line(tmp_path, capsys, name, size, spacing, words):
    path = tmp_path / f"{name}.nii"
    resampled_colin27(path, size, spacing)
    assert select(path, "--json", tmp_path / "out.json") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"votemi: error: {name} spans only"), err
    assert "too thin to score" in err and "NaN" not in err
    for word in words:
        assert word in err, err
    assert not (tmp_path / "out.json").exists()


@pytest.mark.parametrize("name, size, spacing, pngs", [
    ("slabs_20mm", (180, 216, 9), (1.0, 1.0, 20.0), True),
    ("fine_0.1x0.1x10mm", (1200, 1400, 16), (0.1, 0.1, 10.0), False),  # PNGs of 1400 px would only cost time
])
def test_very_anisotropic_volumes_are_scored_at_their_own_positions(tmp_path, capsys, name, size, spacing, pngs):
    path = tmp_path / f"{name}.nii"
    image = resampled_colin27(path, size, spacing)
    out = tmp_path / "out.json"
    options = ["--png-dir", tmp_path / "png"] if pngs else []
    assert select(path, "--json", out, "--quiet", *options) == 0, capsys.readouterr().err
    document = json.loads(out.read_text(encoding="utf-8"))
    matrix = ijk_to_ras_from_image(image)
    for plane in PLANES:
        entry = document["planes"][plane]
        geometry = plane_geometry(matrix, size, plane)
        # Positions come from the image's own geometry (ITK's index-to-physical map, in RAS).
        np.testing.assert_allclose(entry["positions_mm"], geometry.positions_mm, atol=1e-3)
        scores = np.array(entry["scores"])
        assert np.isfinite(scores).all() and scores.max() == pytest.approx(1.0) and scores.std() > 0.05, plane
        picks = entry["selected"]
        assert len(picks) == 3 and picks[0]["score"] == pytest.approx(1.0)
        step = abs(geometry.positions_mm[1] - geometry.positions_mm[0])
        positions = sorted(p["position_mm"] for p in picks)
        assert min(np.diff(positions)) >= max(10.0, 2 * step) - 1e-6, plane
        for pick in picks:
            assert pick["center_ras"] == pytest.approx(list(geometry.centers_ras[pick["index"]]), abs=1e-3)
    assert len(document.get("pngs", [])) == (9 if pngs else 0)


# --- DICOM folders --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aurora():
    """A 40-slice crop of a real int16 T1c stored RAS (1 mm slices) and 30 slices of its FLAIR."""
    case = ef.cases()["aurora_met"]
    t1, flair = (sitk.ReadImage(os.fspath(path)) for path in (case["image"], case["extra"][0]))
    return t1[:, :, 55:95], flair[:, :, 60:90]


def test_folder_with_two_series_says_which_it_read_and_how_to_choose(tmp_path, aurora, capsys):
    t1, flair = aurora
    folder = tmp_path / "study"
    ef.write_dicom_series(t1, folder, number=2, description="T1 post-contrast", prefix="t1_")
    ef.write_dicom_series(flair, folder, number=3, description="FLAIR", prefix="flair_")
    out = tmp_path / "default.json"
    assert cli.main(["select", str(folder), "--planes", "axial", "--slices-per-plane", "1", "--json", str(out),
                     "--quiet"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"votemi: warning: {folder} holds 2 DICOM series; read {ef.dicom_series_uid(2)} "
                             "(T1 post-contrast), 40 slices")
    assert f"{ef.dicom_series_uid(3)} (FLAIR), 30 slices" in err[0] and "--series UID" in err[0]
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["dicom_series"] == {"uid": ef.dicom_series_uid(2), "description": "T1 post-contrast",
                                        "slices": 40, "series_in_folder": 2}
    assert document["size_ijk"] == [240, 240, 40]

    out = tmp_path / "flair.json"
    assert cli.main(["select", str(folder), "--series", ef.dicom_series_uid(3), "--planes", "axial",
                     "--slices-per-plane", "1", "--json", str(out), "--quiet"]) == 0
    assert capsys.readouterr().err == ""
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["dicom_series"]["description"] == "FLAIR" and document["size_ijk"] == [240, 240, 30]
    from_dicom = load_volume(folder, series=ef.dicom_series_uid(3))
    np.testing.assert_allclose(from_dicom.ijk_to_ras, ijk_to_ras_from_image(flair), atol=1e-3)
    np.testing.assert_array_equal(from_dicom.array, sitk.GetArrayFromImage(flair))

    assert cli.main(["select", str(folder), "--series", "1.2.3.4"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no DICOM series 1.2.3.4; it holds: " in err
    assert "(T1 post-contrast), 40 slices" in err and "(FLAIR), 30 slices" in err
    assert cli.main(["select", str(ef.COLIN27), "--series", "1.2.3.4"]) == 1
    assert "a series UID chooses among the DICOM series of a folder" in capsys.readouterr().err


def _itk_is_silent(capfd):
    err = capfd.readouterr().err
    assert "WARNING" not in err and "itk::" not in err and "GDCM" not in err, err


def test_missing_slice_is_interpolated_at_the_right_positions(tmp_path, aurora, capfd):
    t1 = aurora[0]
    ef.write_dicom_series(t1, tmp_path / "series", slices=[k for k in range(40) if k != 20])
    volume = load_volume(tmp_path / "series")
    _itk_is_silent(capfd)
    (warning,) = volume.metadata["warnings"]
    assert "not evenly spaced" in warning and "the widest 2 mm" in warning and "usual 1 mm" in warning
    assert "resampled to 40 slices 1 mm apart" in warning
    # Same grid as the NIfTI the series came from, every acquired slice untouched, the lost one the
    # mean of its neighbours.
    reference = sitk.GetArrayFromImage(t1).astype(np.float32)
    np.testing.assert_allclose(volume.ijk_to_ras, ijk_to_ras_from_image(t1), atol=1e-3)
    kept = [k for k in range(40) if k != 20]
    np.testing.assert_array_equal(volume.array[kept], reference[kept])
    np.testing.assert_allclose(volume.array[20], (reference[19] + reference[21]) / 2, atol=1e-3)


def test_uneven_spacing_is_resampled_and_reported_in_one_line(tmp_path, aurora, capfd):
    t1 = aurora[0]
    # Every second slice in the lower half (2 mm apart), every slice above (1 mm): ITK alone would
    # space all 30 files evenly and put the upper half up to 10 mm off.
    acquired = list(range(0, 21, 2)) + list(range(21, 40))
    ef.write_dicom_series(t1, tmp_path / "series", slices=acquired)
    out = tmp_path / "out.json"
    assert cli.main(["select", str(tmp_path / "series"), "--planes", "axial", "--slices-per-plane", "2", "--quiet",
                     "--json", str(out)]) == 0
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("votemi: warning: series: slices are not evenly spaced"), err
    assert "10 of 29 gaps" in err[0] and "resampled to 40 slices 1 mm apart by linear interpolation" in err[0]
    document = json.loads(out.read_text(encoding="utf-8"))
    truth = plane_geometry(ijk_to_ras_from_image(t1), t1.GetSize(), "axial").positions_mm
    np.testing.assert_allclose(document["planes"]["axial"]["positions_mm"], truth, atol=1e-3)
    volume = load_volume(tmp_path / "series")
    reference = sitk.GetArrayFromImage(t1).astype(np.float32)
    np.testing.assert_array_equal(volume.array[acquired], reference[acquired])


def test_series_that_cannot_be_placed_are_refused(tmp_path, aurora, capfd):
    t1 = aurora[0]
    ef.write_dicom_series(t1, tmp_path / "gap", slices=[k for k in range(40) if not 10 <= k < 15])
    with pytest.raises(VolumeError, match=r"a gap of 6 mm .* other slices are 1 mm apart: about 5 slices are "
                                          r"missing, too many to interpolate"):
        load_volume(tmp_path / "gap")
    ef.write_dicom_series(t1, tmp_path / "repeated", number=2, slices=list(range(20)), prefix="a")
    ef.write_dicom_series(t1, tmp_path / "repeated", number=2, slices=list(range(20)), prefix="b")
    with pytest.raises(VolumeError, match="several slices lie at the same position .* more than one volume"):
        load_volume(tmp_path / "repeated")
    _itk_is_silent(capfd)
