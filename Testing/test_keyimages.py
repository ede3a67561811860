"""Key images as ground truth (issue 30): KOS documents and report texts built here for the real DICOM series of
../shared/data/dicom, parsed, resolved to slices, scored, and run through `votemi bench`."""

from __future__ import annotations

import csv
import glob
import json
import os

import numpy as np
import pytest
from VoteMILib import keyimages
from VoteMILib.geometry import plane_geometry
from VoteMILib.keyimages import KeyImageError, parse_references
from VoteMILib.volumes import load_volume

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

DICOM = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dicom")
SERIES = {name: os.path.join(DICOM, name, "series") for name in ("sts001_ct", "sts001_mr_t1")}


def _datasets(name):
    """The series' files read whole, by InstanceNumber."""
    files = glob.glob(os.path.join(SERIES[name], "*.dcm"))
    return {int(ds.InstanceNumber): ds for ds in map(pydicom.dcmread, files)}


def _write_kos(path, datasets, title="ForConference"):
    """A Key Object Selection document (highdicom) that selects ``datasets``."""
    from pydicom.sr.codedict import codes

    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=datasets, content=hd.ko.KeyObjectSelection(document_title=getattr(codes.DCM, title),
                                                            referenced_objects=datasets),
        series_instance_uid=hd.UID(), series_number=90, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="test")
    kos.save_as(path, enforce_file_format=True)
    return str(path)


def _write_reports(path, rows, columns=("case", "report")):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        writer.writerows(rows)
    return str(path)


@pytest.fixture(scope="module")
def ct():
    volume = load_volume(SERIES["sts001_ct"])
    return volume, _datasets("sts001_ct"), plane_geometry(volume.ijk_to_ras, volume.size_ijk, "axial")


def _axial_index(geometry, dataset) -> int:
    """The axial slice at the dataset's own z (LPS z is S): computed apart from the module under test."""
    return int(np.argmin(np.abs(geometry.positions_mm - float(dataset.ImagePositionPatient[2]))))


def test_parse_references_in_three_styles_and_variants():
    text = ("Mass in the thigh (series 3, image 42), largest on Se 3 Im 45; compare image 12 of series 5. "
            "SERIES 3 IMAGE 7, ser. 4/img. 9, series #2 image no. 30, Image 5 in Series 6.")
    assert parse_references(text) == [(3, 42), (3, 45), (5, 12), (3, 7), (4, 9), (2, 30), (6, 5)]
    # Neighbouring references are not joined across: each image keeps its own series.
    assert parse_references("image 42 of series 3, image 50 of series 4") == [(3, 42), (4, 50)]
    assert parse_references("A 3 cm lesion in segment 5, see image; series of 4 scans, increase 3 im") == []


def test_kos_resolves_to_the_slices_of_its_instances(tmp_path, ct):
    volume, datasets, geometry = ct
    chosen = [datasets[10], datasets[40]]
    path = _write_kos(tmp_path / "ko.dcm", chosen)
    found = keyimages.load_key_images(path, volume.metadata["dicom_files"], "sts001_ct")
    assert found.kind == "kos" and found.title == "For Conference"
    assert found.labels == ["series 2, image 10", "series 2, image 40"]
    key = keyimages.score_case(volume, found, {}, planes=("axial", "coronal"))
    assert key["plane"] == "axial" and key["planes"]["coronal"] is None
    assert key["key_slices"] == sorted(_axial_index(geometry, ds) for ds in chosen)


def test_reports_resolve_by_series_and_image_number(tmp_path):
    volume = load_volume(SERIES["sts001_mr_t1"])
    datasets = _datasets("sts001_mr_t1")
    number = int(datasets[0].SeriesNumber)
    path = _write_reports(tmp_path / "reports.csv", [
        ("other", f"series {number}, image 3"),
        ("sts001_mr_t1", f"Thigh mass, Se {number} Im 20. Also image 33 of series {number}; prior series 2, image 5."),
        ("sts001_mr_t1", f"Addendum: series {number}, image 20 again."),
    ])
    found = keyimages.load_key_images(path, volume.metadata["dicom_files"], "sts001_mr_t1")
    assert found.kind == "report"
    assert found.labels == [f"series {number}, image 20", f"series {number}, image 33"]
    assert found.notes and "other series ignored" in found.notes[0]
    geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, "axial")
    key = keyimages.score_case(volume, found, {}, planes=("axial",))
    assert key["key_slices"] == sorted(_axial_index(geometry, datasets[n]) for n in (20, 33))


def test_scoring_distances_hits_and_baselines(tmp_path, ct):
    from VoteMILib.preprocess import foreground_mask
    from VoteMILib.selection import select_slices

    volume, datasets, geometry = ct
    result = select_slices(volume, top_k=3, seed=0, mode="findings")
    picks = [pick.index for pick in result.planes["axial"].selected]
    by_slice = {_axial_index(geometry, ds): ds for ds in datasets.values()}
    spacing = float(np.linalg.norm(volume.ijk_to_ras[:3, 2]))
    # Key image on the top pick: distance 0, a hit.
    on_top = keyimages.load_key_images(_write_kos(tmp_path / "on.dcm", [by_slice[picks[0]]]),
                                       volume.metadata["dicom_files"], "ct")
    scores = keyimages.score_case(volume, on_top, {"findings": result}, body_kji=foreground_mask(volume.array))
    axial = scores["planes"]["axial"]
    assert axial["findings"]["distance_mm"] == pytest.approx(0, abs=1e-6) and axial["findings"]["hit"] == 1.0
    assert scores["planes"]["sagittal"] is None and scores["planes"]["coronal"] is None
    assert 0 < axial["random"]["hit"] < axial["random"]["hit_top3"] < 1
    # Key image 10 slices from every pick: each pick misses, and the distance is counted in slices and mm.
    far = next(i for i in range(geometry.count) if min(abs(i - p) for p in picks) >= 10)
    away = keyimages.load_key_images(_write_kos(tmp_path / "far.dcm", [by_slice[far]]),
                                     volume.metadata["dicom_files"], "ct")
    axial = keyimages.score_case(volume, away, {"findings": result}, planes=("axial",))["planes"]["axial"]
    assert axial["findings"]["distance_slices"] == pytest.approx(abs(far - picks[0]))
    assert axial["findings"]["distance_mm"] == pytest.approx(abs(far - picks[0]) * spacing, rel=1e-3)
    assert axial["findings"]["hit"] == 0.0 and axial["findings"]["hit_top3"] == 0.0
    # Two slices (6.5 mm here) still hit: the tolerance is max(2 slices, 5 mm).
    near = keyimages._score_slice(picks[0], geometry, np.array([float(geometry.ijk_indices[picks[0]]) + 2]), spacing)
    assert near["hit"] == 1.0 and near["distance_mm"] > keyimages.HIT_MM


def test_one_line_errors(tmp_path, ct):
    volume, datasets, _ = ct
    files = volume.metadata["dicom_files"]
    stranger = pydicom.dcmread(glob.glob(os.path.join(SERIES["sts001_ct"], "*.dcm"))[0])
    stranger.SOPInstanceUID = hd.UID()  # claims the CT series, but is not in it
    errors = {
        "not in the case's DICOM series": lambda: keyimages.load_key_images(
            _write_kos(tmp_path / "stranger.dcm", [datasets[5], stranger]), files, "ct"),
        "references no instance of the case's DICOM series": lambda: keyimages.load_key_images(
            _write_kos(tmp_path / "mr.dcm", [_datasets("sts001_mr_t1")[5]]), files, "ct"),
        "cites no image": lambda: keyimages.load_key_images(
            _write_reports(tmp_path / "none.csv", [("ct", "Large thigh mass, see key images.")]), files, "ct"),
        "has no 'report' column": lambda: keyimages.load_key_images(
            _write_reports(tmp_path / "cols.csv", [("ct", "series 2, image 4")], ("case", "text")), files, "ct"),
        "holds no report for case ct": lambda: keyimages.load_key_images(
            _write_reports(tmp_path / "other.csv", [("mr", "series 2, image 4")]), files, "ct"),
        "series 2, image 400, but that series holds images 0-58": lambda: keyimages.load_key_images(
            _write_reports(tmp_path / "far.csv", [("ct", "series 2, image 400")]), files, "ct"),
        "is not a DICOM Key Object Selection document": lambda: keyimages.load_key_images(files[0], files, "ct"),
        "need its image to be a DICOM series folder": lambda: keyimages.load_key_images(files[0], None, "ct"),
    }
    for message, call in errors.items():
        with pytest.raises(KeyImageError, match=message) as raised:
            call()
        assert "\n" not in str(raised.value)


def test_bench_scores_key_images_from_cases_tsv_and_case_folders(tmp_path, capsys):
    from VoteMILib.cli import main

    ct_sets = _datasets("sts001_ct")
    mr_number = int(_datasets("sts001_mr_t1")[0].SeriesNumber)
    table = tmp_path / "tsv"
    (table / "ct").mkdir(parents=True)
    (table / "ct" / "series").symlink_to(os.path.abspath(SERIES["sts001_ct"]), target_is_directory=True)
    _write_kos(table / "ct" / "ko.dcm", [ct_sets[20], ct_sets[24]], title="OfInterest")
    (table / "cases.tsv").write_text("case\timage\tmask\textra\tkey_images\nct\tseries\t\t\tko.dcm\n")
    folders = tmp_path / "folders"
    (folders / "mr").mkdir(parents=True)
    (folders / "mr" / "series").symlink_to(os.path.abspath(SERIES["sts001_mr_t1"]), target_is_directory=True)
    _write_reports(folders / "mr" / "reports.csv", [("mr", f"Mass: Se {mr_number} Im 22, Se {mr_number} Im 26.")])
    out = tmp_path / "bench.json"
    assert main(["bench", str(table), str(folders), "--mode", "findings", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Key images as ground truth" in printed and "ct: kos 'Of Interest', 2 key image(s) at axial" in printed
    assert "coronal: no key image in this plane" in printed
    document = json.loads(out.read_text())
    assert set(document["key_images"]) == {"findings", "random", "middle"}
    assert document["key_images"]["findings"]["cases"] == 2
    assert document["key_images"]["middle"]["hit_top3"] is None
    assert [row["key_images"]["kind"] for row in document["cases"]] == ["kos", "report"]


def test_bench_refuses_a_bad_source_before_selecting(tmp_path, capsys):
    from VoteMILib.cli import main

    (tmp_path / "ct").mkdir()
    (tmp_path / "ct" / "series").symlink_to(os.path.abspath(SERIES["sts001_ct"]), target_is_directory=True)
    _write_reports(tmp_path / "ct" / "reports.csv", [("ct", "no reference here")])
    assert main(["bench", str(tmp_path)]) != 0
    captured = capsys.readouterr()
    assert "cites no image" in captured.err and "select" not in captured.out


def test_without_pydicom_a_one_line_error_says_to_install_it(tmp_path, ct, monkeypatch):
    volume, datasets, _ = ct
    path = _write_kos(tmp_path / "ko.dcm", [datasets[3]])
    monkeypatch.setitem(__import__("sys").modules, "pydicom", None)  # as when pydicom is not installed
    with pytest.raises(KeyImageError, match=r"needs pydicom: pip install pydicom") as raised:
        keyimages.load_key_images(path, volume.metadata["dicom_files"], "ct")
    assert "\n" not in str(raised.value)
