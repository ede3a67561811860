"""``votemi bench --normal``: lesion-free slabs cut from lesion scans, and the share of planes claiming that
something stood out on them and on Colin27."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import bench_normal
from VoteMILib.bench_normal import MIN_SLAB_SLICES, NORMAL_MARGIN_MM, lesion_free_slab
from VoteMILib.volumes import volume_from_array

sitk = pytest.importorskip("SimpleITK")


def sheared_volume(shape_kji=(40, 30, 90)):
    """A volume on a sheared, anisotropic grid (slice planes not perpendicular to their axis) with a box lesion."""
    matrix = np.eye(4)
    matrix[:3, :3] = np.array([[0.9, 0.0, 0.3], [0.0, 1.1, 0.0], [0.2, 0.0, 2.0]])
    matrix[:3, 3] = (10.0, -40.0, 5.0)
    lesion = np.zeros(shape_kji, bool)
    lesion[18:22, 10:20, 50:58] = True
    array = np.random.default_rng(0).normal(0.0, 1.0, shape_kji).astype(np.float32)
    return volume_from_array(array, matrix, name="sheared"), lesion


def ras_of(matrix, kji):
    ijk = np.asarray(kji, float)[:, ::-1]
    return ijk @ np.asarray(matrix)[:3, :3].T + np.asarray(matrix)[:3, 3]


def test_slab_is_the_largest_lesion_free_part_and_keeps_ras_positions():
    volume, lesion = sheared_volume()
    slab, what = lesion_free_slab(volume, lesion)
    axis, side, count = "KJI".index(what[0]), what.split()[1], int(what.split()[2])
    assert slab.array.shape[axis] == count >= MIN_SLAB_SLICES
    assert (axis, side) == (2, "low")  # the I axis has the widest margin (50 voxels of 0.9 mm below the lesion)
    kept = np.argwhere(np.ones(slab.array.shape, bool))
    # Each kept voxel is where it was: same RAS position, same value.
    assert np.allclose(ras_of(slab.ijk_to_ras, kept), ras_of(volume.ijk_to_ras, kept))
    assert np.array_equal(slab.array, volume.array[:, :, :count])
    # Every kept voxel lies at least the margin from every lesion voxel, in space (the grid is sheared): the
    # slab's slice nearest the lesion is checked against every lesion voxel ...
    lesion_ras = ras_of(volume.ijk_to_ras, np.argwhere(lesion))
    nearest_slice = np.argwhere(np.ones(slab.array.shape[:2], bool))
    nearest_slice = np.column_stack([nearest_slice, np.full(len(nearest_slice), count - 1)])
    distances = np.linalg.norm(ras_of(volume.ijk_to_ras, nearest_slice)[:, None] - lesion_ras[None], axis=2)
    assert distances.min() >= NORMAL_MARGIN_MM - 1e-6
    # ... and one slice more would not be: the slab goes as close as the margin allows.
    step = bench_normal.slab_spacing(volume.ijk_to_ras, 2)
    assert (50 - count) * step < NORMAL_MARGIN_MM <= (50 - count + 1) * step


def test_no_slab_when_the_lesion_fills_the_scan():
    volume, lesion = sheared_volume((20, 20, 20))
    slab, what = lesion_free_slab(volume, np.ones(lesion.shape, bool))
    assert slab is None and what == f"no {MIN_SLAB_SLICES} slices {NORMAL_MARGIN_MM:g} mm from the lesion"
    assert lesion_free_slab(volume, np.zeros(lesion.shape, bool)) == (None, "empty mask")


def test_bench_normal_reports_claims_per_region_and_source(tmp_path):
    from VoteMILib.datasets import load_mask
    from VoteMILib.selection import select_slices
    from VoteMILib.volumes import load_volume

    folder = tmp_path / "cases"
    folder.mkdir()
    (folder / ef.MAIN_CASE).symlink_to(ef.DATA / ef.MAIN_CASE, target_is_directory=True)
    (folder / "cases.tsv").write_text(f"case\timage\tmask\n{ef.MAIN_CASE}\timage.nii.gz\tmask.nii.gz\n",
                                      encoding="utf-8")
    out = tmp_path / "bench.json"
    run = ef.run_votemi("bench", folder, "--mode", "findings", "--planes", "axial,coronal", "--normal",
                        "--json", out)
    assert run.returncode == 0, run.stderr
    normal = json.loads(out.read_text(encoding="utf-8"))["normal"]
    rows = {row["case"]: row for row in normal["cases"]}
    assert set(rows) == ({"colin27", ef.MAIN_CASE} if ef.COLIN27.exists() else {ef.MAIN_CASE})
    # The slab's claims are those of findings mode on the slab the bench cuts.
    volume = load_volume(ef.cases()[ef.MAIN_CASE]["image"])
    slab, what = lesion_free_slab(volume, load_mask(ef.cases()[ef.MAIN_CASE]["mask"], volume))
    result = select_slices(slab, planes=("axial", "coronal"), top_k=3, seed=0, mode="findings")
    row = rows[ef.MAIN_CASE]
    assert row["scan"] == what and row["scanned"] == "head" and row["source"] == "tcga-glioma-t1c"
    for plane in ("axial", "coronal"):
        assert row["planes"][plane]["stood_out"] == result.planes[plane].stood_out
        assert row["planes"][plane]["cue"] == result.planes[plane].cue
    head = normal["by_region"]["head"]
    assert head["scans"] == len(rows)
    for plane in ("axial", "coronal"):
        assert head[plane] == pytest.approx(np.mean([r["planes"][plane]["stood_out"] for r in rows.values()]))
    assert normal["by_source"]["tcga-glioma-t1c"]["scans"] == 1
    assert "Share of planes that claim something stood out on lesion-free scans" in run.stdout
    # The region the selection detects on the slab is shown beside the one scanned (half a brain may not read
    # as a head).
    assert row["detected"] == result.region["name"]
    assert f"| {ef.MAIN_CASE} | {what} | head ({row['detected']}) | tcga-glioma-t1c |" in run.stdout


def test_a_slab_too_thin_to_score_gives_way_to_the_next():
    rng = np.random.default_rng(1)
    thin = volume_from_array(rng.normal(0, 1, (6, 64, 64)).astype(np.float32), np.eye(4), name="thin")
    thick = volume_from_array(rng.normal(0, 1, (40, 64, 64)).astype(np.float32), np.eye(4), name="thick")
    scored, what = bench_normal.first_scorable([(thin, "thin slab"), (thick, "thick slab")], planes=("axial",))
    assert what == "thick slab" and set(scored["planes"]) == {"axial"}
    assert isinstance(scored["planes"]["axial"]["stood_out"], bool)
    scored, why = bench_normal.first_scorable([(thin, "thin slab")], planes=("axial",))
    assert scored is None and why.startswith("no slab thick enough to score (thin slab: ")


def test_a_background_only_slab_is_left_out():
    # A skull-stripped brain is zero outside the brain: a slab of its margin holds nothing to show.
    array = np.zeros((40, 40, 80), np.float32)
    array[5:35, 5:35, 40:78] = np.random.default_rng(2).normal(100, 5, (30, 30, 38))
    lesion = np.zeros(array.shape, bool)
    lesion[15:25, 15:25, 70:75] = True
    slabs = bench_normal.lesion_free_slabs(volume_from_array(array, np.eye(4)), lesion)
    assert [what.split()[:2] for _, what in slabs] == [["I", "low"]]
    assert slabs[0][0].array.shape[2] == 70 - 30 + 1 and np.ptp(slabs[0][0].array) > 0
