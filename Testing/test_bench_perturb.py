"""``votemi bench --fov-check`` perturbations (``VoteMILib.bench_perturb``): air padding, hard cut, one-sided
field of view, reslicing, MRI rescale and noise; each keeps the lesion at its RAS position, and padding with
air moves no pick on a real scan."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial import cKDTree

import engine_fixtures as ef
from VoteMILib import bench_perturb as bp
from VoteMILib.bench_split import half_of
from VoteMILib.datasets import find_cases, load_mask
from VoteMILib.geometry import PLANES
from VoteMILib.volumes import load_volume, volume_from_array

sitk = pytest.importorskip("SimpleITK")
SARCOMA = ef.DATA / "sarcoma"
#: Design-half crops (no test gates on a check case): a CT with air around the limb, and a small MRI.
CT_CASE, MR_CASE = "sts002_ct", "sts041_mr_t1"


def sarcoma_case(name):
    case = next(c for c in find_cases(SARCOMA) if c.name == name)
    assert half_of(name) == "design"
    volume = load_volume(case.image)
    return volume, load_mask(case.mask, volume)


def oblique_volume(shape_kji=(24, 30, 40)):
    """An MRI-like volume on a rotated, anisotropic grid with a box lesion off centre."""
    angle = np.deg2rad(20)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation @ np.diag([0.9, 1.2, 2.5])
    matrix[:3, 3] = (-20.0, 35.0, -60.0)
    array = np.random.default_rng(1).uniform(100.0, 900.0, shape_kji).astype(np.float32)
    array[:, :, :4] = 5.0  # background beside the body
    lesion = np.zeros(shape_kji, bool)
    lesion[8:13, 12:20, 22:31] = True
    return volume_from_array(array, matrix, name="oblique"), lesion


def ras_points(volume, lesion_kji) -> np.ndarray:
    """RAS mm of every lesion voxel, sorted so that two masks can be compared point by point."""
    ijk = np.argwhere(lesion_kji)[:, ::-1].astype(float)
    points = ijk @ volume.ijk_to_ras[:3, :3].T + volume.ijk_to_ras[:3, 3]
    return points[np.lexsort(points.T[::-1])]


def check_kept_in_place(volume, lesion, perturbed):
    """The lesion is whole and every lesion voxel is where it was; for a change of grid only (padding,
    cuts) every kept voxel keeps its value too."""
    assert perturbed.lesion_kji.sum() == lesion.sum()
    assert np.allclose(ras_points(perturbed.volume, perturbed.lesion_kji), ras_points(volume, lesion), atol=1e-6)
    if perturbed.kind in ("pad", "hard cut", "one-sided"):
        inside = perturbed.lesion_kji
        assert np.array_equal(perturbed.volume.array[inside], volume.array[lesion])


def check_resliced(volume, lesion, perturbed, spacing):
    """Each resliced lesion voxel lies within half an old slice of a lesion voxel, and the lesion's extent
    along the slice axis is kept to within a slice (half of one at each end, old or new, the wider)."""
    axis = bp.slice_axis(volume)
    assert perturbed.volume.spacing_mm[axis] == pytest.approx(spacing)
    old = bp.slice_step_mm(volume.ijk_to_ras, axis)
    before, after = ras_points(volume, lesion), ras_points(perturbed.volume, perturbed.lesion_kji)
    nearest, _ = cKDTree(before).query(after)
    assert nearest.max() <= 0.5 * old + 1e-6
    normal = bp.slice_normal(volume.ijk_to_ras, axis)
    extent = lambda points: np.ptp(points @ normal)  # noqa: E731
    new = bp.slice_step_mm(perturbed.volume.ijk_to_ras, axis)
    assert abs(extent(after) - extent(before)) <= max(old, new) + 1e-6


@pytest.mark.parametrize("make", [oblique_volume, lambda: sarcoma_case(CT_CASE)], ids=["oblique", CT_CASE])
def test_every_perturbation_keeps_the_lesion_at_its_ras_points(make):
    volume, lesion = make()
    made = list(bp.perturbations(volume, lesion, np.random.default_rng(0), modality="MRI"))
    kinds = [p.kind for p in made]
    assert kinds[:2] == ["pad", "pad"] and set(kinds[2:]) == set(bp.KINDS) - {"pad"}
    for perturbed in made:
        assert perturbed.volume.array.shape != volume.array.shape or perturbed.kind in ("rescaled", "noise")
        if perturbed.kind.endswith("mm slices"):
            check_resliced(volume, lesion, perturbed, float(perturbed.kind.split()[0]))
        else:
            check_kept_in_place(volume, lesion, perturbed)


@pytest.mark.parametrize("axis", range(3))
@pytest.mark.parametrize("side", ("low", "high"))
def test_padding_is_air_beyond_the_face_and_moves_no_voxel(axis, side):
    volume, lesion = oblique_volume()
    padded = bp.pad_face(volume, lesion, axis, side, fill=-7.0)
    count = padded.volume.size_ijk[axis] - volume.size_ijk[axis]
    assert count == int(np.ceil(bp.PAD_MM / bp.slice_step_mm(volume.ijk_to_ras, axis)))
    old = [slice(None)] * 3
    air = [slice(None)] * 3
    old[2 - axis] = slice(count, None) if side == "low" else slice(0, -count)
    air[2 - axis] = slice(0, count) if side == "low" else slice(-count, None)
    assert np.array_equal(padded.volume.array[tuple(old)], volume.array)
    assert np.all(padded.volume.array[tuple(air)] == -7.0)
    # Slice n of the scan and its slice in the padded scan are the same plane in space.
    normal = bp.slice_normal(volume.ijk_to_ras, axis)
    shift = count if side == "low" else 0
    for index in (0, 5):
        assert bp.slice_position_mm(padded.volume.ijk_to_ras, axis, index + shift, normal) == pytest.approx(
            bp.slice_position_mm(volume.ijk_to_ras, axis, index, normal))


def test_air_is_minus_1000_on_ct_and_the_background_on_mri():
    volume, _ = oblique_volume()
    assert bp.air_value(volume, "CT") == bp.CT_AIR_HU
    assert bp.air_value(volume, "MRI") == 5.0


def test_hard_cut_takes_most_of_the_widest_margin():
    volume, lesion = oblique_volume()
    # Margins in mm: I 22 x 0.9 low / 9 x 0.9 high, J 12 x 1.2 / 10 x 1.2, K 8 x 2.5 / 11 x 2.5 (the widest).
    cut = bp.hard_cut(volume, lesion, np.random.default_rng(3))
    axis, side, removed, margin = cut.what.split()[1], cut.what.split()[2], int(cut.what.split()[3]), \
        int(cut.what.split()[5])
    assert (axis, side, margin) == ("K", "high", 11)
    assert bp.HARD_CUT_SHARE[0] * margin - 0.5 <= removed <= bp.HARD_CUT_SHARE[1] * margin + 0.5
    assert cut.volume.array.shape == (24 - removed, 30, 40)
    assert bp.hard_cut(volume, np.ones(lesion.shape, bool), np.random.default_rng(0)) is None


def test_one_sided_removes_the_half_without_the_lesion_centre():
    volume, lesion = oblique_volume()
    sided = bp.one_sided(volume, lesion)
    # I runs left-right; the body spans I 4..39 (middle 21.5) and the lesion I 22..30: the low half goes.
    assert sided.what.startswith("I low side removed")
    assert sided.volume.array.shape == (24, 30, 40 - 22)
    check_kept_in_place(volume, lesion, sided)


def test_reslice_is_skipped_at_the_scan_own_spacing():
    volume, lesion = oblique_volume()
    assert bp.slice_axis(volume) == 2
    assert bp.reslice(volume, lesion, 2.5) is None and bp.reslice(volume, lesion, 2.6) is None
    thin = bp.reslice(volume, lesion, 1.25)
    assert thin.volume.array.shape[0] == 2 * 23 + 1


def test_rescale_and_noise_are_deterministic():
    volume, lesion = oblique_volume()
    first, again = bp.rescaled(volume, lesion), bp.rescaled(volume, lesion)
    assert np.array_equal(first.volume.array, again.volume.array)
    assert np.allclose(first.volume.array, 3.0 * volume.array + 200.0)
    noisy = [bp.noisy(volume, lesion, bp.perturbation_rng(0, "case")).volume.array for _ in range(2)]
    assert np.array_equal(noisy[0], noisy[1])
    other = bp.noisy(volume, lesion, bp.perturbation_rng(1, "case")).volume.array
    assert not np.array_equal(noisy[0], other)
    low, high = np.percentile(volume.array, (1, 99))
    assert np.std(noisy[0] - volume.array) == pytest.approx(bp.NOISE_SHARE * (high - low), rel=0.05)
    whats = [[p.what for p in bp.perturbations(volume, lesion, bp.perturbation_rng(0, "case"))] for _ in range(2)]
    assert whats[0] == whats[1]


def test_padding_moves_no_pick_on_a_real_case():
    from VoteMILib.selection import select_slices

    volume, lesion = sarcoma_case(CT_CASE)
    whole = select_slices(volume, top_k=3, mode="findings")
    for axis in range(3):
        for side in ("low", "high"):
            padded = bp.pad_face(volume, lesion, axis, side, bp.air_value(volume, "CT"))
            result = select_slices(padded.volume, top_k=3, mode="findings")
            compared = bp.compare_picks(volume, lesion, whole, padded, result, PLANES)
            assert all(compared[p]["stable"] == 1.0 for p in PLANES), (padded.what, compared)


def test_bench_fov_check_prints_and_stores_the_perturbations(tmp_path):
    folder = tmp_path / "one"
    folder.mkdir()
    (folder / MR_CASE).symlink_to(SARCOMA / MR_CASE, target_is_directory=True)
    (folder / "cases.tsv").write_text("case\timage\tmask\n" + f"{MR_CASE}\timage.nii.gz\tmask.nii.gz\n",
                                      encoding="utf-8")
    out = tmp_path / "bench.json"
    run = ef.run_votemi("bench", folder, "--fov-check", "--mode", "findings", "--planes", "axial", "--json", out)
    assert run.returncode == 0, run.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    runs = document["cases"][0]["perturb"]
    # An MRI with 3.27 mm slices: two faces padded, the two cuts, 1, 3 and 5 mm slices, rescale and noise.
    assert [r["kind"] for r in runs] == ["pad", "pad", "hard cut", "one-sided", "1 mm slices", "3 mm slices",
                                         "5 mm slices", "rescaled", "noise"]
    by_region = document["perturbations"]["by_region"]["design"]["extremity"]
    assert by_region["pad"]["runs"] == 2 and by_region["pad"]["cases"] == 1
    assert by_region["pad"]["axial"]["stable"] == pytest.approx(np.mean([r["planes"]["axial"]["stable"]
                                                                         for r in runs[:2]]))
    assert document["perturbations"]["by_source"]["design"]["ibsi-sarcoma-mr-t1"]["noise"]["runs"] == 1
    # The rescaled scan's pick is recomputed here: the stored comparison is the real one.
    from VoteMILib.selection import select_slices

    volume, lesion = sarcoma_case(MR_CASE)
    whole = select_slices(volume, planes=("axial",), top_k=3, mode="findings")
    rescaled = bp.rescaled(volume, lesion)
    again = select_slices(rescaled.volume, planes=("axial",), top_k=3, mode="findings")
    assert runs[7]["planes"] == bp.compare_picks(volume, lesion, whole, rescaled, again, ("axial",))
    assert "Perturbations by half and region" in run.stdout and "| design | extremity | rescaled | 1 | 1 |" \
        in run.stdout


def test_a_perturbed_scan_too_thin_to_score_is_skipped_not_fatal():
    from VoteMILib.selection import select_slices

    # The breast crop (design) is 45 voxels of 0.66 mm left-right: without the side the lesion is not on,
    # it is thinner than a patch.
    volume = ef.volume("pyrad_breast1_mr")
    lesion = load_mask(ef.cases()["pyrad_breast1_mr"]["mask"], volume)
    whole = select_slices(volume, planes=("axial",), top_k=3, mode="findings")
    runs = bp.perturbation_rows("pyrad_breast1_mr", volume, lesion, whole, ("axial",), "findings")
    skipped = [r for r in runs if "skipped" in r]
    assert [r["kind"] for r in skipped] == ["one-sided"]
    assert "too thin to score" in skipped[0]["skipped"] and "\n" not in skipped[0]["skipped"]
    row = {"case": "pyrad_breast1_mr", "half": "design", "scanned": "breast", "source": "pyradiomics-breast-mr",
           "planes": {"axial": {"findings": {"hit_half": 1.0}}}, "perturb": runs}
    means = bp.summarise_perturbations([row], ("axial",), "findings")
    assert "one-sided" not in means["design"]["breast"] and "hard cut" in means["design"]["breast"]
    assert "not scored: " in bp.format_perturbation_cases([row], ("axial",))
