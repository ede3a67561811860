"""``votemi bench`` on the shared cases (quality beside baselines) and ``--speed``."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import bench_split, cli
from VoteMILib.bench import (BASELINES, FOV_CUT_SHARE, METRICS, TOP3, evaluate_case, fov_cut, score_slice,
                             section_areas)
from VoteMILib.datasets import bench_cases, discover_cases, find_cases
from VoteMILib.geometry import PLANES, plane_geometry
from VoteMILib.volumes import VolumeError, volume_from_array

METHODS = ("findings", "representative", *BASELINES)
MODES = ("findings", "representative")
SARCOMA = ef.DATA / "sarcoma"

sitk = pytest.importorskip("SimpleITK")


def check_scores(scores, mode=False):
    assert set(scores) == set(METRICS) | ({TOP3} if mode else set())
    if mode:  # the top pick is one of the top 3
        assert 0.0 <= scores[TOP3] <= 1.0
        assert scores[TOP3] >= scores["hit_half"] - 1e-9
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
            check_scores(scored[method], mode=method in MODES)
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


def test_batch_and_bench_read_a_cases_table_alike():
    """One reader of cases.tsv: votemi batch's discovery finds the bench's cases, with their masks and extras."""
    def where(path):
        return os.path.normcase(os.path.abspath(path)) if path else None

    for folder in (ef.DATA, ef.DATA / "sarcoma"):
        bench = [(c.name, where(c.image), where(c.mask), [where(e) for e in c.extras]) for c in find_cases(folder)]
        batch = [(c.name, where(c.image), where(c.mask), [where(e) for e in c.extras])
                 for c in discover_cases([folder])]
        assert batch == bench and any(mask for _, _, mask, _ in bench)


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
    assert [r["half"] for r in rows] == [bench_split.half_of(name) for name in names]
    # Both brains with masks are development cases, so design; the subset holds brains only.
    assert {r["half"] for r in masked} == {"design"} and rows[-1]["half"] == "unsplit"
    assert list(document["means"]) == ["design"] and list(document["means"]["design"]) == ["head"]
    means = document["means"]["design"]["head"]
    assert means["cases"] == 2
    for plane in PLANES:
        assert set(means[plane]) == set(METHODS)
        for method in METHODS:
            check_scores(means[plane][method], mode=method in MODES)
            for metric in means[plane][method]:
                expected = np.mean([r["planes"][plane][method][metric] for r in masked])
                assert means[plane][method][metric] == pytest.approx(expected)
    # The printed tables: per case, then means with every baseline beside Vote-MI.
    for name in names:
        assert name in printed
    assert "brats_gli_00001" not in printed.split("Per case")[1]  # no mask: not in the quality tables
    assert "Means over the cases with masks, by half and region (2 cases" in printed
    assert ("| plane | findings | representative | random | middle | largest section | findings top-3 hit_half "
            "| representative top-3 hit_half |") in printed
    assert "| design | head | 2 |" in printed  # the headline table
    # The same means by source: one per collection, from the repository's table (never the data folder).
    assert [r["source"] for r in rows] == ["pyradiomics-brain-t1c", "tcga-glioma-t1c", "brats-t1c"]
    by_source = document["means_by_source"]["design"]
    assert list(by_source) == ["pyradiomics-brain-t1c", "tcga-glioma-t1c"]
    for source, row in zip(by_source, masked):
        assert by_source[source]["cases"] == 1
        for plane in PLANES:
            assert by_source[source][plane]["middle"] == row["planes"][plane]["middle"]
    assert "design half, tcga-glioma-t1c (1 cases):" in printed
    assert "| design | tcga-glioma-t1c | 1 |" in printed
    assert "| random top-1 (a / c / s) | middle top-1 (a / c / s) | largest section top-1 (a / c / s) |" in printed
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
        top3 = max(float(area[pick.index] >= 0.5 * area[best]) for pick in plane_result.selected)
        assert len(plane_result.selected) == 3 and scores[TOP3] == top3, plane
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
    assert ("| scan | volume | runs | read s (median) | select s findings (median) | select s representative (median) "
            "| target s (findings) | select / read | volume MB |") in printed
    rows = json.loads(out.read_text(encoding="utf-8"))["speed"]
    # The targets of the brief: brain MRI at both sizes, a chest CT from a real thorax CT.
    assert [(r["scan"], r["size"], r["target_s"]) for r in rows] == [
        ("brain MRI", "240x240x155", 0.5), ("brain MRI", "512x512x400", 3.0), ("chest CT", "512x512x130", 1.5)]
    assert rows[2]["source"].endswith("mirp_nsclc_lung1-001/image.nii.gz")
    for row in rows:
        assert row["within_target"] == (row["select_s"] <= row["target_s"])
        assert f"| {row['scan']} | {row['size']} | 1 |" in printed
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


def test_split_is_the_written_rule_by_patient_and_region():
    # Every masked case of both bench folders is in the split, and the stored table is what the
    # documented rule draws (so nobody can move a case between halves without it showing).
    masked = [c.name for folder in (ef.DATA, SARCOMA) for c in find_cases(folder) if c.mask]
    assert sorted(masked) == sorted(bench_split.SPLIT)
    assert bench_split.draw_split(masked, bench_split.SEED) == bench_split.SPLIT
    assert bench_split.draw_split(masked, bench_split.SEED + 1) != bench_split.SPLIT  # the seed matters
    halves = {}
    for case, (patient, region, half) in bench_split.SPLIT.items():
        assert half in bench_split.HALVES and region in bench_split.REGIONS
        assert halves.setdefault(patient, half) == half, f"{patient} is on both sides"
    # CT and MR T1 of one patient, and the same scan in both folders, on one side.
    sts002 = {bench_split.half_of(c) for c in ("sts002_ct", "sts002_mr_t1", "mirp_sts002_ct")}
    assert len(sts002) == 1
    assert bench_split.patient_of("sts041_mr_t1") == bench_split.patient_of("sts041_ct") == "sts041"
    # Stratified: per region the design half holds n // 2 of the n patients drawn, and every development
    # patient (looked at while the cues were built) besides.
    for region in bench_split.REGIONS:
        patients = {p: h for c, (p, r, h) in bench_split.SPLIT.items() if r == region}
        assert sum(h == "design" for h in patients.values()) >= len(patients) // 2, region
    check_patients = {p for p, r, h in bench_split.SPLIT.values() if h == "check"}
    assert bench_split.DEVELOPMENT_PATIENTS <= set(halves)
    assert check_patients.isdisjoint(bench_split.DEVELOPMENT_PATIENTS)
    assert bench_split.half_of("brats_gli_00001") == "unsplit" and bench_split.region_of("brats_gli_00001") is None


#: Test files that name a check case only as the one real DICOM series with an RTSTRUCT (dicom/sts001_*): read as
#: DICOM, exported or rasterised, or given key images placed relative to its picks; never scored against its lesion.
DICOM_ONLY = {"test_batch.py", "test_dicom_export.py", "test_guided.py", "test_keyimages.py", "test_slicer_findings.py"}


def test_no_test_gates_on_a_check_case():
    # A test that requires a check case to be a hit tunes the code on the check half: the cases tests rely on
    # (the main case, the body-cue cases) must be design cases.
    import ast

    check = {case for case, (_, _, half) in bench_split.SPLIT.items() if half == "check"}
    named = []
    for path in sorted(Path(__file__).parent.glob("*.py")):
        if path.name in DICOM_ONLY:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in check:
                named.append(f"{path.name}:{node.lineno} {node.value}")
    assert named == []
    assert bench_split.half_of(ef.MAIN_CASE) == "design"


def test_every_case_has_a_source():
    from VoteMILib.bench_sources import UNLISTED, source_of

    shared = [c for folder in (ef.DATA, SARCOMA) for c in find_cases(folder)]
    assert all(source_of(c.name, c.source) != UNLISTED for c in shared)
    assert source_of("sts005_ct") == "ibsi-sarcoma-ct" and source_of("sts005_mr_t1") == "ibsi-sarcoma-mr-t1"
    assert source_of("mirp_sts002_ct") == source_of("sts002_ct")  # one scan, one source
    assert source_of("my_scan") == UNLISTED and source_of("my_scan", " site-a-ct ") == "site-a-ct"


def test_cases_tsv_source_column(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "cases.tsv").write_text("case\timage\tmask\tsource\na\timage.nii.gz\t\tsite-a-ct\n", encoding="utf-8")
    assert find_cases(tmp_path)[0].source == "site-a-ct"


def test_sarcoma_folder_and_both_folders_together():
    sarcoma = find_cases(SARCOMA)
    assert len(sarcoma) == 36 and all(c.mask and os.path.exists(c.mask) for c in sarcoma)
    both = bench_cases([ef.DATA, SARCOMA])
    names = [c.name for c in both]
    assert "mirp_sts002_ct" not in names and "sts002_ct" in names  # one scan, scored once
    assert len(names) == len(find_cases(ef.DATA)) - 1 + 36
    check = bench_cases([ef.DATA, SARCOMA], "check")
    assert check and all(bench_split.half_of(c.name) == "check" for c in check)
    assert {c.name for c in check} | {c.name for c in bench_cases([ef.DATA, SARCOMA], "design")} \
        == {n for n in names if n in bench_split.SPLIT}


def oblique_volume(shape_kji=(30, 40, 50)):
    """A volume with a tilted, LPS-like direction matrix, anisotropic spacing and a box 'lesion'."""
    rng = np.random.default_rng(3)
    array = rng.normal(100.0, 10.0, shape_kji).astype(np.float32)
    angle = np.deg2rad(10.0)
    rotation = np.array([[-np.cos(angle), -np.sin(angle), 0.0], [np.sin(angle), -np.cos(angle), 0.0],
                         [0.0, 0.0, 1.0]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.8, 0.9, 2.5])
    matrix[:3, 3] = (-20.0, 35.0, -60.0)
    lesion = np.zeros(shape_kji, bool)
    lesion[12:18, 10:22, 20:31] = True
    array[lesion] += 200.0
    return volume_from_array(array, matrix, name="oblique"), lesion


def test_fov_cut_keeps_ras_positions_and_the_lesion():
    volume, lesion = oblique_volume()
    low = np.array([12, 10, 20])
    high = np.array([17, 21, 30])
    seen = set()
    for seed in range(12):
        cut, offset_ijk, what = fov_cut(volume, lesion, np.random.default_rng(seed))
        axis, side = "KJI".index(what[0]), what.split()[1]
        seen.add((axis, side))
        removed = int(what.split()[2])
        margin = low[axis] if side == "low" else lesion.shape[axis] - 1 - high[axis]
        assert int(what.split()[4]) == margin
        assert FOV_CUT_SHARE[0] * margin - 0.5 <= removed <= FOV_CUT_SHARE[1] * margin + 0.5
        assert cut.array.shape[axis] == lesion.shape[axis] - removed
        assert [n for a, n in enumerate(cut.array.shape) if a != axis] == \
            [n for a, n in enumerate(lesion.shape) if a != axis]
        # Every kept voxel keeps its RAS position: voxel (i, j, k) of the cut is voxel
        # (i, j, k) + offset of the original, in value and in RAS.
        box = tuple(slice(o, o + n) for o, n in zip(offset_ijk[::-1], cut.array.shape))
        np.testing.assert_array_equal(cut.array, volume.array[box])
        for ijk in ((0, 0, 0), (4, 7, 2), tuple(np.array(cut.size_ijk) - 1)):
            ras_cut = cut.ijk_to_ras @ np.append(ijk, 1.0)
            ras_whole = volume.ijk_to_ras @ np.append(np.add(ijk, offset_ijk), 1.0)
            np.testing.assert_allclose(ras_cut, ras_whole, atol=1e-9)
        assert lesion[box].sum() == lesion.sum()  # the lesion kept whole
    assert len(seen) >= 4  # the axis and side are drawn, not fixed
    whole, _, what = fov_cut(volume, np.ones(lesion.shape, bool), np.random.default_rng(0))
    assert whole is None and what == "no margin to cut"


def test_bench_half_and_fov_check(subset_folder, tmp_path):
    folder, names = subset_folder
    out = tmp_path / "fov.json"
    run = ef.run_votemi("bench", folder, "--half", "design", "--fov-check", "--mode", "findings",
                        "--planes", "axial,coronal", "--json", out)
    assert run.returncode == 0, run.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    rows = document["cases"]
    # brats_gli_00001 is outside the split: left out of a half.
    assert [r["case"] for r in rows] == [n for n in names if bench_split.half_of(n) == "design"] and len(rows) == 2
    assert document["settings"]["half"] == "design" and document["settings"]["fov_check"] is True
    main = next(r for r in rows if r["case"] == ef.MAIN_CASE)
    volume = ef.volume(ef.MAIN_CASE)
    lesion = sitk.GetArrayFromImage(sitk.ReadImage(os.fspath(ef.cases()[ef.MAIN_CASE]["mask"]))) > 0
    # The bench's cut is the seeded one: redo it and check the stored shift and stability.
    from VoteMILib.bench import FOV_STABLE_MM, FOV_STABLE_SLICES, fov_rng
    from VoteMILib.selection import select_slices

    cut, offset_ijk, what = fov_cut(volume, lesion, fov_rng(0, ef.MAIN_CASE))
    assert main["fov"]["cut"] == what
    whole = ef.selection(ef.MAIN_CASE)
    again = select_slices(cut, planes=("axial", "coronal"), top_k=3, seed=0, mode="findings")
    for plane in ("axial", "coronal"):
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        position = dict(zip(geometry.ijk_indices.tolist(), geometry.positions_mm.tolist()))
        moved = again.planes[plane].selected[0].ijk_index + int(offset_ijk[geometry.ijk_axis])
        shift = abs(position[moved] - position[whole.planes[plane].selected[0].ijk_index])
        scored = main["fov"]["planes"][plane]
        assert scored["shift_mm"] == pytest.approx(shift, abs=1e-6)
        step = float(np.linalg.norm(volume.ijk_to_ras[:3, geometry.ijk_axis]))
        assert scored["stable"] == float(shift <= max(FOV_STABLE_SLICES * step, FOV_STABLE_MM) + 1e-6)
        cut_lesion = lesion[tuple(slice(o, o + n) for o, n in zip(offset_ijk[::-1], cut.array.shape))]
        cut_positions = plane_geometry(cut.ijk_to_ras, cut.size_ijk, plane).positions_mm
        assert scored["hit_half"] == score_slice(again.planes[plane].selected[0].index,
                                                 section_areas(cut, cut_lesion, plane), cut_positions)["hit_half"]
    fov = document["means"]["design"]["head"]["fov"]
    assert fov["cases"] == 2
    for plane in ("axial", "coronal"):
        assert fov[plane]["stable"] == pytest.approx(np.mean([r["fov"]["planes"][plane]["stable"] for r in rows]))
    assert "Field-of-view cut" in run.stdout and f"| {ef.MAIN_CASE} | design | {what} |" in run.stdout
    assert "| half | region | cases | top-1 axial | top-1 coronal | top-3 axial | top-3 coronal | FOV stable axial " \
           "| FOV stable coronal |" in run.stdout
    # A half the folder holds no case of is a one-line error.
    folder_check = ef.run_votemi("bench", folder, "--half", "check", "--planes", "axial")
    assert folder_check.returncode == 1
    assert folder_check.stderr.strip().count("\n") == 0 and "check half" in folder_check.stderr


def test_sensitivity_varies_named_scales_and_restores_them(tmp_path, capsys):
    import importlib.util

    from VoteMILib.cues import lung_nodule

    spec = importlib.util.spec_from_file_location("bench_sensitivity", Path(__file__).parent / "bench_sensitivity.py")
    sensitivity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sensitivity)
    folder = tmp_path / "two"
    folder.mkdir()
    lines = ["case\tdisease\timage\tmask\textra"]
    # One check, one design patient; small MR crops. The check case is taken from the split, not named: the tool
    # is run on it, no hit is required of it.
    check = next(c for c, (_, _, half) in sorted(bench_split.SPLIT.items()) if half == "check" and c.endswith("_mr_t1"))
    for name in (check, "sts011_mr_t1"):
        (folder / name).symlink_to(SARCOMA / name, target_is_directory=True)
        lines.append(f"{name}\tsoft-tissue-sarcoma\timage.nii.gz\tmask.nii.gz\t")
    (folder / "cases.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    original = lung_nodule.BULK_MM
    assert sensitivity.main([str(folder), "--scale", "cues.lung_nodule.BULK_MM", "--factors", "0.7"]) == 0
    assert lung_nodule.BULK_MM == original
    printed = capsys.readouterr().out
    assert "design: 1 cases: sts011_mr_t1" in printed and f"check: 1 cases: {check}" in printed
    assert "| scale | value | design axial | design coronal | design sagittal | check axial |" in printed
    assert f"| cues.lung_nodule.BULK_MM x0.7 | {original * 0.7:.4g} |" in printed
    with pytest.raises(SystemExit, match="has no attribute"):
        sensitivity.main([str(folder), "--scale", "cues.lung_nodule.NO_SUCH_SCALE"])


def load_sensitivity_tool():
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_sensitivity", Path(__file__).parent / "bench_sensitivity.py")
    sensitivity = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sensitivity)
    return sensitivity


def test_sensitivity_varies_copies_and_bound_defaults_too():
    # A scale copied by `from .tissues import FAT_PLANE_HU` or bound as a default argument is varied where the
    # cue reads it, and restored after.
    from VoteMILib.cues import asymmetry, mass, organ_lesion, tissues

    sensitivity = load_sensitivity_tool()
    copies, defaults, read = sensitivity.bindings("cues.tissues.FAT_PLANE_HU")
    assert read and defaults == []
    assert sorted(copies) == [("VoteMILib.cues.mass", "FAT_PLANE_HU"), ("VoteMILib.cues.organ_lesion", "FAT_PLANE_HU")]
    original = tissues.FAT_PLANE_HU
    try:
        sensitivity.set_scale(tissues, "FAT_PLANE_HU", original * 0.7, copies, defaults)
        assert tissues.FAT_PLANE_HU == mass.FAT_PLANE_HU == organ_lesion.FAT_PLANE_HU == original * 0.7
    finally:
        sensitivity.set_scale(tissues, "FAT_PLANE_HU", original, copies, defaults)
    assert mass.FAT_PLANE_HU == organ_lesion.FAT_PLANE_HU == original
    copies, defaults, _ = sensitivity.bindings("cues.asymmetry.RIM_MM")
    assert defaults == [("VoteMILib.cues.asymmetry", ("inner_region",), 0)]
    try:
        sensitivity.set_scale(asymmetry, "RIM_MM", 20.0, copies, defaults)
        assert asymmetry.inner_region.__defaults__ == (20.0,)
    finally:
        sensitivity.set_scale(asymmetry, "RIM_MM", 14.0, copies, defaults)
    assert asymmetry.inner_region.__defaults__ == (14.0,)


def test_sensitivity_fails_loudly_on_a_scale_it_cannot_vary(tmp_path):
    sensitivity = load_sensitivity_tool()
    # Bound into a dataclass field when the module is imported: setting the module attribute changes nothing.
    with pytest.raises(SystemExit, match="class SelectionSettings .* binds it"):
        sensitivity.bindings("selection.PATCH_SIZE")
    # Read by no function.
    with pytest.raises(SystemExit, match="no function of VoteMILib reads it"):
        sensitivity.main([str(tmp_path), "--scale", "cues.regions.REGIONS"])
