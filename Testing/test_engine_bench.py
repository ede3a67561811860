"""``votemi bench`` on the shared cases (quality beside baselines) and ``--speed``."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import cli
from VoteMILib.bench import BASELINES, METRICS, evaluate_case, find_cases

METHODS = ("findings", "representative", *BASELINES)
from VoteMILib.geometry import PLANES
from VoteMILib.volumes import VolumeError

sitk = pytest.importorskip("SimpleITK")


def check_scores(scores):
    assert set(scores) == set(METRICS)
    assert 0.0 <= scores["hit_any"] <= 1.0 and 0.0 <= scores["hit_half"] <= 1.0
    assert math.isfinite(scores["distance_mm"]) and scores["distance_mm"] >= 0.0
    # Holding half the largest lesion section implies holding some lesion.
    assert scores["hit_half"] <= scores["hit_any"] + 1e-9


def check_row(row, planes, masked, methods=METHODS):
    assert row["region"] in ("head", "chest", "body") and set(row["cues"]) == set(planes)
    assert row["load_s"] > 0 and row["select_s"] > 0 and row["peak_mb"] > 0 and row["volume_mb"] > 0
    if not masked:
        assert row["planes"] == {}
        return
    assert list(row["planes"]) == list(planes)
    for plane in planes:
        scored = row["planes"][plane]
        assert set(scored) == set(methods), "every mode and every baseline must be reported"
        for method in methods:
            check_scores(scored[method])
        for method in set(methods) - {"random"}:  # one slice each: hits are 0 or 1
            assert scored[method]["hit_any"] in (0.0, 1.0) and scored[method]["hit_half"] in (0.0, 1.0)


def test_find_cases_reads_the_shared_table():
    found = find_cases(ef.DATA)
    table = ef.cases()
    assert [c.name for c in found] == list(table)
    assert len(found) >= 6
    for case in found:
        row = table[case.name]
        assert os.path.samefile(case.image, row["image"])
        assert (case.mask is None) == (row["mask"] is None)
        if case.mask:
            assert os.path.exists(case.mask)
        assert [os.path.basename(e) for e in case.extras] == [p.name for p in row["extra"]]
    assert sum(1 for c in found if c.mask) == sum(1 for row in table.values() if row["mask"]) >= 5


def test_find_cases_in_case_subfolders(tmp_path):
    for name in ("tcga_du_7294", "brats_gli_00001"):
        source = ef.cases()[name]
        folder = tmp_path / name
        folder.mkdir()
        (folder / "image.nii.gz").symlink_to(source["image"])
        (folder / "flair.nii.gz").symlink_to(source["extra"][0])
        if source["mask"]:
            (folder / "mask.nii.gz").symlink_to(source["mask"])
    (tmp_path / "notes").mkdir()  # no image.*: not a case
    found = find_cases(tmp_path)
    assert [c.name for c in found] == ["brats_gli_00001", "tcga_du_7294"]
    assert found[0].mask is None and found[1].mask.endswith("mask.nii.gz")
    assert [os.path.basename(e) for e in found[1].extras] == ["flair.nii.gz"]
    with pytest.raises(VolumeError, match="no cases"):
        find_cases(tmp_path / "notes")
    with pytest.raises(VolumeError, match="no such folder"):
        find_cases(tmp_path / "absent")


@pytest.fixture(scope="module")
def subset_folder(tmp_path_factory):
    """A bench folder with a cases.tsv naming three shared cases (two with masks, one without)."""
    folder = tmp_path_factory.mktemp("bench_subset")
    names = ("pyradiomics_brain2", ef.MAIN_CASE, "brats_gli_00001")
    lines = ["case\tdisease\timage\tmask\textra"]
    for name in names:
        (folder / name).symlink_to(ef.DATA / name, target_is_directory=True)
        row = ef.cases()[name]
        lines.append("\t".join([name, row["disease"], row["image"].name, row["mask"].name if row["mask"] else "",
                                ",".join(p.name for p in row["extra"])]))
    (folder / "cases.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, names


def test_bench_on_shared_cases(subset_folder, tmp_path):
    # The real console script, every plane, on three of the shared cases (a full run of all six
    # takes a minute; find_cases on the whole table is checked above).
    folder, names = subset_folder
    out = tmp_path / "bench.json"
    run = ef.run_votemi("bench", folder, "--json", out)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    printed = run.stdout
    document = json.loads(out.read_text(encoding="utf-8"))
    rows = document["cases"]
    assert [r["case"] for r in rows] == list(names)
    for row in rows:
        check_row(row, PLANES, masked=ef.cases()[row["case"]]["mask"] is not None)
    # Means are over the cases with masks only.
    masked = [r for r in rows if r["planes"]]
    assert len(masked) == 2 and all(r["region"] == "head" for r in rows)
    assert list(document["means"]) == ["head"]  # the subset holds brains only
    means = document["means"]["head"]
    for plane in PLANES:
        assert set(means[plane]) == set(METHODS)
        for method in METHODS:
            check_scores(means[plane][method])
            for metric in METRICS:
                expected = np.mean([r["planes"][plane][method][metric] for r in masked])
                assert means[plane][method][metric] == pytest.approx(expected)
    # The printed tables: per case, then means with every baseline beside Vote-MI.
    for name in names:
        assert name in printed
    assert "brats_gli_00001" not in printed.split("Per case")[1]  # no mask: not in the quality tables
    assert "Means over the cases with masks, by detected region (2 cases" in printed
    assert "| plane | findings | representative | random | middle | largest section |" in printed
    for plane in PLANES:
        assert f"| {plane} |" in printed
    check_top_slice_against_the_mask(next(r for r in rows if r["case"] == ef.MAIN_CASE))


def check_top_slice_against_the_mask(row):
    """Recompute Vote-MI's hit_any / hit_half / distance for the main case from the mask file itself."""
    mask = sitk.GetArrayFromImage(sitk.ReadImage(os.fspath(ef.cases()[ef.MAIN_CASE]["mask"]))) > 0  # (K, J, I)
    result = ef.selection(ef.MAIN_CASE)  # the bench runs the same default selection
    assert mask.any()
    for plane in PLANES:
        plane_result = result.planes[plane]
        array_axis = 2 - plane_result.ijk_axis
        area = mask.sum(axis=tuple(a for a in range(3) if a != array_axis))[plane_result.ijk_indices]
        top = plane_result.selected[0].index
        best = int(np.argmax(area))
        scores = row["planes"][plane]["findings"]
        assert scores["hit_any"] == float(area[top] > 0), plane
        assert scores["hit_half"] == float(area[top] >= 0.5 * area[best]), plane
        distance = abs(plane_result.positions_mm[top] - plane_result.positions_mm[best])
        assert scores["distance_mm"] == pytest.approx(distance, abs=1e-3), plane
        # Random's expected hit rate is the share of head slices that hold lesion: between 0 and 1,
        # and above zero because the lesion lies inside the head.
        assert 0.0 < row["planes"][plane]["random"]["hit_any"] < 1.0


def test_evaluate_case_with_extra_sequence():
    case = next(c for c in find_cases(ef.DATA) if c.name == "aurora_met")
    assert case.mask and case.extras
    row = evaluate_case(case, planes=("axial",), use_extras=True)
    check_row(row, ("axial",), masked=True, methods=("findings", *BASELINES))


def test_speed_mode_prints_its_table(tmp_path, capsys):
    assert ef.COLIN27.exists(), "apt-get install mricron-data (Colin27 T1 is the speed benchmark's source)"
    out = tmp_path / "speed.json"
    assert cli.main(["bench", "--speed", "--repeats", "1", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert ("| volume | runs | read s (median) | select s findings (median) | select s representative (median) "
            "| select / read | volume MB |") in printed
    rows = json.loads(out.read_text(encoding="utf-8"))["speed"]
    assert [r["size"] for r in rows] == ["240x240x155", "512x512x400"]
    for row in rows:
        assert row["size"] in printed
        assert row["runs"] == 1
        assert row["load_s"] > 0 and row["select_s"] > 0 and row["peak_mb"] > 0
        assert set(row["select_s_by_mode"]) == {"findings", "representative"}
        assert row["select_s"] == row["select_s_by_mode"]["findings"]
        assert row["ratio_to_load"] == pytest.approx(row["select_s"] / row["load_s"])
        voxels = np.prod([int(n) for n in row["size"].split("x")])
        assert row["volume_mb"] == pytest.approx(voxels * 4 / 2 ** 20)
        assert row["memory_limit_mb"] == pytest.approx(4 * row["volume_mb"] + 300)
        assert row["total_mb"] == pytest.approx(row["volume_mb"] + row["peak_mb"])


def test_bench_without_folder_or_speed_is_an_error(capfd):
    assert cli.main(["bench"]) == 1
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DATA_DIR" in err[0]
