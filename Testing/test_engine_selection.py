"""Vote-MI selection on real scans: scores for every slice, top-k picks, determinism, progress and
cancellation, extra sequences."""

from __future__ import annotations

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib.geometry import NORMAL_AXIS, PLANES, plane_geometry
from VoteMILib.selection import Cancelled, select_slices
from VoteMILib.voting import pick_top_slices


def default_min_spacing(positions):
    step = (positions[-1] - positions[0]) / (len(positions) - 1)
    return max(10.0, 2.0 * step)


def summits(scores):
    """Slices at least as high as both neighbours and higher than the one before (first of a flat top)."""
    padded = np.concatenate([[-np.inf], scores, [-np.inf]])
    return np.array([scores[i] > 0 and padded[i + 1] > padded[i] and padded[i + 1] >= padded[i + 2]
                     for i in range(len(scores))])


def check_picks(plane_result, top_k, min_spacing):
    """Picks are greedy: each is the best slice not within ``min_spacing`` of an earlier pick; in
    findings mode (``stood_out`` not None) the best such summit of the score curve while one is left."""
    positions, scores = plane_result.positions_mm, plane_result.scores
    hedging = plane_result.stood_out is not None
    peaks = summits(scores)
    selected = plane_result.selected
    assert 1 <= len(selected) <= top_k
    chosen = []
    for rank, pick in enumerate(selected, start=1):
        assert pick.rank == rank and pick.plane == plane_result.plane
        assert 0 <= pick.index < len(positions)
        assert pick.position_mm == pytest.approx(positions[pick.index])
        assert pick.score == pytest.approx(scores[pick.index])
        assert pick.ijk_index == plane_result.ijk_indices[pick.index]
        # Slices exactly min_spacing from a pick are on the boundary: float rounding decides them.
        allowed = np.array([all(abs(p - positions[c]) >= min_spacing - 1e-6 for c in chosen) for p in positions])
        clear = np.array([all(abs(p - positions[c]) >= min_spacing + 1e-6 for c in chosen) for p in positions])
        assert allowed[pick.index], f"{plane_result.plane}: pick {rank} is within {min_spacing} mm of an earlier one"
        if hedging and (clear & peaks).any():
            assert peaks[pick.index] or (allowed & ~clear & peaks).any(), f"{plane_result.plane}: pick {rank} is no summit"
            if peaks[pick.index]:
                assert pick.score >= scores[clear & peaks].max() - 1e-9, f"{plane_result.plane}: pick {rank} not the best summit"
        elif clear.any() and not (hedging and (allowed & peaks).any()):
            assert pick.score >= scores[clear].max() - 1e-9, f"{plane_result.plane}: pick {rank} is not the best left"
        chosen.append(pick.index)
    # Fewer than top_k picks only when no slice is left far enough from the others.
    if len(selected) < top_k:
        assert all(any(abs(p - positions[c]) < min_spacing + 1e-6 for c in chosen) for p in positions)
    picked_scores = [s.score for s in selected]
    if not hedging:
        assert picked_scores == sorted(picked_scores, reverse=True)
    assert selected[0].index == int(np.argmax(scores)) or scores[selected[0].index] == scores.max()


@pytest.mark.parametrize("case", ef.case_names())
def test_scores_cover_every_slice(case):
    volume = ef.volume(case)
    result = ef.selection(case)
    assert list(result.planes) == list(PLANES)
    assert tuple(result.size_ijk) == volume.size_ijk
    for plane in PLANES:
        plane_result = result.planes[plane]
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        count = volume.size_ijk[geometry.ijk_axis]
        assert plane_result.normal_axis == NORMAL_AXIS[plane]
        assert len(plane_result.scores) == len(plane_result.positions_mm) == count, plane
        np.testing.assert_allclose(plane_result.positions_mm, geometry.positions_mm)
        assert np.all(np.diff(plane_result.positions_mm) > 0), f"{plane}: positions not ascending"
        scores = np.asarray(plane_result.scores, dtype=float)
        assert np.all(np.isfinite(scores)), plane
        assert scores.min() >= 0.0 and scores.max() <= 1.0, plane
        assert scores.max() > 0.0, f"{plane}: no slice got any vote"
        # Not a constant: some slices are better than others.
        assert scores.std() > 0.01, plane
        check_picks(plane_result, 3, default_min_spacing(plane_result.positions_mm))
        assert len(plane_result.selected) == 3, plane
    settings = result.settings
    assert settings["top_k"] == 3 and settings["seed"] == 0 and settings["planes"] == list(PLANES)
    assert settings["patches"] > 0


def test_background_slices_score_low():
    # Slices wholly outside the head get no patches and so no votes: the first and last slices of
    # a skull-stripped scan with a wide margin (tcga_du_7294) score far below the best.
    result = ef.selection(ef.MAIN_CASE)
    volume = ef.volume(ef.MAIN_CASE)
    for plane in PLANES:
        plane_result = result.planes[plane]
        geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
        others = tuple(a for a in range(3) if a != 2 - geometry.ijk_axis)
        head = (volume.array > 0).sum(axis=others)[plane_result.ijk_indices]
        inside = plane_result.positions_mm[head > 0]
        # Empty slices more than 10 mm from the head (vote smoothing may reach a little further).
        gap = np.abs(np.subtract.outer(plane_result.positions_mm, inside)).min(axis=1)
        empty = (head == 0) & (gap > 10.0)
        assert empty.any(), plane
        assert np.all(plane_result.scores[empty] <= 0.05 * plane_result.scores.max()), plane
        assert all(head[s.index] > 0 for s in plane_result.selected), plane


def test_same_seed_gives_identical_results():
    first = ef.selection(ef.MAIN_CASE)
    fractions, polls = [], []
    second = select_slices(ef.volume(ef.MAIN_CASE), seed=0,
                           progress=lambda fraction, message: fractions.append((fraction, message)),
                           cancel=lambda: polls.append(1) and False)
    for plane in PLANES:
        a, b = first.planes[plane], second.planes[plane]
        np.testing.assert_array_equal(a.scores, b.scores)
        np.testing.assert_array_equal(a.positions_mm, b.positions_mm)
        assert [s.index for s in a.selected] == [s.index for s in b.selected]
        assert [s.score for s in a.selected] == [s.score for s in b.selected]
    assert first.settings == second.settings
    # Progress: fractions within 0..1, never going back, ending at 1.0, each with a message.
    values = [f for f, _ in fractions]
    assert values, "progress callback never called"
    assert all(0.0 <= v <= 1.0 for v in values)
    assert values == sorted(values)
    assert values[-1] == 1.0
    assert all(isinstance(m, str) and m for _, m in fractions)
    # Cancellation is polled at least at every progress step (and more often inside long steps).
    assert len(polls) >= len(values)


def test_result_json_matches_the_issue_shape():
    result = ef.selection(ef.MAIN_CASE)
    document = result.to_dict(image="scan.nii.gz")
    assert {"image", "size_ijk", "spacing_mm", "planes", "settings", "timing_s"} <= set(document)
    assert document["size_ijk"] == list(ef.volume(ef.MAIN_CASE).size_ijk)
    for plane in PLANES:
        entry = document["planes"][plane]
        assert entry["normal_axis"] == NORMAL_AXIS[plane]
        assert len(entry["positions_mm"]) == len(entry["scores"])
        for pick in entry["selected"]:
            assert isinstance(pick["index"], int)
            assert pick["position_mm"] == pytest.approx(entry["positions_mm"][pick["index"]], abs=1e-3)
            assert pick["score"] == pytest.approx(entry["scores"][pick["index"]], abs=1e-6)


def test_top_k_with_explicit_spacing():
    result = select_slices(ef.volume("aurora_met"), planes=("axial", "coronal"), top_k=6, min_spacing_mm=18.0)
    assert list(result.planes) == ["axial", "coronal"]
    for plane_result in result.planes.values():
        assert len(plane_result.selected) == 6
        check_picks(plane_result, 6, 18.0)
        positions = [s.position_mm for s in plane_result.selected]
        gaps = np.abs(np.subtract.outer(positions, positions))[np.triu_indices(len(positions), 1)]
        assert gaps.min() >= 18.0 - 1e-6


def test_pick_top_slices_skips_neighbours_of_better_slices():
    positions = np.arange(20, dtype=float) * 2.0  # 2 mm apart
    scores = np.zeros(20)
    scores[[9, 10, 11]] = [0.9, 1.0, 0.95]  # one broad peak
    scores[3] = 0.5
    scores[17] = 0.6
    assert pick_top_slices(scores, positions, 3, 5.0) == [10, 17, 3]
    assert pick_top_slices(scores, positions, 3, 1.0) == [10, 11, 9]
    # Asking for more than fits: as many as the spacing allows, best first.
    picks = pick_top_slices(scores, positions, 10, 15.0)
    assert picks[0] == 10 and len(picks) == 3
    assert all(abs(positions[a] - positions[b]) >= 15.0 for a in picks for b in picks if a != b)


def test_cancel_stops_at_once():
    volume = ef.volume(ef.MAIN_CASE)
    calls = []
    with pytest.raises(Cancelled):
        select_slices(volume, cancel=lambda: True, progress=lambda f, m: calls.append(f))
    assert calls == [], "no progress may be reported once cancel() returned True"


def test_cancel_midway():
    volume = ef.volume(ef.MAIN_CASE)
    polls, fractions = [], []

    def cancel():
        polls.append(len(fractions))
        return len(fractions) >= 3  # after three progress reports

    with pytest.raises(Cancelled):
        select_slices(volume, cancel=cancel, progress=lambda f, m: fractions.append(f))
    assert len(fractions) == 3, "selection went on after cancel() returned True"
    assert max(fractions) < 1.0
    # cancel() returned True exactly once: the selection stopped at the first poll that asked it to.
    assert sum(1 for p in polls if p >= 3) == 1


def test_extra_volume_votes_without_changing_the_output_shape():
    case = ef.MAIN_CASE
    volume, flair = ef.volume(case), ef.extra_volume(case)
    assert "flair" in str(ef.cases()[case]["extra"][0])
    plain = ef.selection(case)
    both = select_slices(volume, extra_volumes=[flair])
    assert both.settings["sequences"] == [volume.name, flair.name]
    assert set(both.to_dict()) == set(plain.to_dict())
    assert tuple(both.size_ijk) == tuple(plain.size_ijk)
    for plane in PLANES:
        a, b = plain.planes[plane], both.planes[plane]
        np.testing.assert_array_equal(a.positions_mm, b.positions_mm)
        assert len(b.scores) == len(a.scores)
        assert np.all(np.isfinite(b.scores)) and b.scores.min() >= 0 and b.scores.max() <= 1
        assert len(b.selected) == len(a.selected) == 3
        check_picks(b, 3, default_min_spacing(b.positions_mm))
        assert set(b.to_dict()) == set(a.to_dict())
    # The FLAIR takes part: scores are not the T1c-only scores.
    assert any(not np.allclose(plain.planes[p].scores, both.planes[p].scores) for p in PLANES)


def test_bad_arguments_raise_value_error():
    volume = ef.volume(ef.MAIN_CASE)
    with pytest.raises(ValueError):
        select_slices(volume, top_k=0)
    with pytest.raises(ValueError):
        select_slices(volume, planes=("transverse",))
    with pytest.raises(ValueError):
        select_slices(volume, mode="nonsense")


def test_selection_leaves_the_volume_untouched():
    from VoteMILib.volumes import load_volume

    volume = load_volume(ef.cases()["tcga_fg_6692"]["image"])  # float32 on disk: no conversion copy
    before = volume.array.copy()
    matrix = volume.ijk_to_ras.copy()
    select_slices(volume, planes=("axial",), top_k=1)
    np.testing.assert_array_equal(volume.array, before, err_msg="select_slices modified the input voxels")
    np.testing.assert_array_equal(volume.ijk_to_ras, matrix)


def test_working_grid_does_not_write_into_its_input():
    from VoteMILib.preprocess import block_mean

    array = np.arange(6 * 8 * 10, dtype=np.float32).reshape(6, 8, 10)
    original = array.copy()
    out = block_mean(array, (2, 2, 2))
    np.testing.assert_array_equal(array, original)
    assert out.shape == (3, 4, 5)
    assert out[0, 0, 0] == pytest.approx(original[:2, :2, :2].mean())
    assert out[2, 3, 4] == pytest.approx(original[4:6, 6:8, 8:10].mean())


def test_focus_lies_on_its_slice_and_inside_the_head():
    case = ef.MAIN_CASE
    volume, result = ef.volume(case), ef.selection(case)
    inverse = np.linalg.inv(volume.ijk_to_ras)
    axis_of = {"R": 0, "A": 1, "S": 2}
    for plane in PLANES:
        for pick in result.planes[plane].selected:
            assert pick.focus_ras is not None and pick.mark_ras == pick.focus_ras
            assert pick.focus_ras[axis_of[NORMAL_AXIS[plane]]] == pytest.approx(pick.position_mm)
            i, j, k = np.round(inverse @ np.append(pick.focus_ras, 1.0))[:3].astype(int)
            assert volume.array[k, j, i] > 0, f"{plane} focus {pick.focus_ras} is outside the brain"


def test_focus_points_at_the_lesion():
    """On a glioma with a clear mass, the best slice's focus of every plane lies on the lesion."""
    case = ef.MAIN_CASE
    volume, result = ef.volume(case), ef.selection(case)
    from VoteMILib.datasets import load_mask

    lesion = np.argwhere(load_mask(ef.cases()[case]["mask"], volume))[:, ::-1]  # (i, j, k)
    lesion_ras = lesion @ volume.ijk_to_ras[:3, :3].T + volume.ijk_to_ras[:3, 3]
    for plane in PLANES:
        focus = np.array(result.planes[plane].selected[0].focus_ras)
        assert np.linalg.norm(lesion_ras - focus, axis=1).min() < 5.0, f"{plane} focus misses the lesion"


def test_plain_mode_marks_slice_centres():
    result = select_slices(ef.volume(ef.MAIN_CASE), planes="axial", mode="representative")
    for pick in result.planes["axial"].selected:
        assert pick.focus_ras is None and pick.mark_ras == pick.center_ras


@pytest.mark.parametrize("center_kji, radius", [((110, 120, 60), 10), ((80, 90, 120), 8)])
def test_default_mode_finds_a_lesion_in_an_unseen_brain(center_kji, radius):
    """A bright lesion-like sphere put into Colin27 (a brain the score was never looked at on) is on
    the best slice of every plane, and each mark sits on it."""
    assert ef.COLIN27.exists(), "apt-get install mricron-data"
    from VoteMILib.volumes import load_volume, volume_from_array

    brain = load_volume(ef.COLIN27)
    voxels = brain.array.copy()
    k, j, i = np.ogrid[: voxels.shape[0], : voxels.shape[1], : voxels.shape[2]]
    sphere = (k - center_kji[0]) ** 2 + (j - center_kji[1]) ** 2 + (i - center_kji[2]) ** 2 <= radius ** 2
    voxels[sphere] = 1.2 * np.percentile(voxels[voxels > voxels.mean()], 99)
    result = select_slices(volume_from_array(voxels, brain.ijk_to_ras, name="colin27 with lesion"))
    center_ras = (brain.ijk_to_ras @ np.array([*center_kji[::-1], 1.0]))[:3]
    for plane, axis in (("axial", 2), ("coronal", 1), ("sagittal", 0)):
        best = result.planes[plane].selected[0]
        assert abs(best.position_mm - center_ras[axis]) < radius / 2, f"{plane} pick misses the lesion"
        assert np.linalg.norm(np.array(best.mark_ras) - center_ras) < radius, f"{plane} mark is off the lesion"


def _exact_dbscan(points, eps, min_samples):
    """Textbook DBSCAN on the full distance matrix (small inputs only), border points to the nearest core."""
    from scipy.sparse.csgraph import connected_components

    close = np.linalg.norm(points[:, None] - points[None], axis=-1) <= eps
    core = close.sum(axis=1) >= min_samples
    _, component = connected_components(close & core[:, None] & core[None], directed=False)
    labels = np.where(core, component, -1)
    distance = np.linalg.norm(points[:, None] - points[None], axis=-1)
    for i in np.flatnonzero(~core & (close & core[None]).any(axis=1)):
        labels[i] = component[np.flatnonzero(core)[np.argmin(distance[i, core])]]
    return labels


def test_dbscan_on_a_neighbour_graph_matches_textbook_dbscan():
    from VoteMILib.clustering import NOISE, dbscan, estimate_eps, nearest_neighbours

    rng = np.random.default_rng(4)
    big = rng.normal(0.0, 1.0, (600, 5))
    small = rng.normal(12.0, 1.0, (300, 5))
    lonely = rng.uniform(40.0, 200.0, (10, 5))  # far from everything and from each other
    points = np.concatenate([big, small, lonely])
    distances, indices = nearest_neighbours(points, 26)
    eps = estimate_eps(distances, 25)
    labels = dbscan(distances, indices, eps, 25)
    exact = _exact_dbscan(points, eps, 25)
    assert np.array_equal(labels == NOISE, exact == -1)
    # The same partition, up to the clusters' numbering (here: by size).
    pairs = {(a, b) for a, b in zip(labels, exact) if a != NOISE}
    assert len(pairs) == len({a for a, _ in pairs}) == len({b for _, b in pairs}) == 2
    assert np.bincount(labels[labels >= 0]).tolist()[0] > np.bincount(labels[labels >= 0]).tolist()[1]
    assert set(labels[900:]) == {NOISE}


def test_findings_picks_hedge_between_separate_summits():
    """Two findings along the normal: the second pick goes to the other summit, not to a slice on the
    shoulder of the first, however high; the plain top-k (the paper's vote) keeps the shoulder."""
    positions = np.arange(40, dtype=float) * 2.0
    scores = np.exp(-0.5 * ((positions - 20.0) / 8.0) ** 2) + 0.4 * np.exp(-0.5 * ((positions - 66.0) / 3.0) ** 2)
    hedged = pick_top_slices(scores, positions, 2, 10.0, peaks_first=True)
    plain = pick_top_slices(scores, positions, 2, 10.0)
    assert positions[hedged[0]] == positions[plain[0]] == 20.0
    assert positions[hedged[1]] == 66.0
    assert abs(positions[plain[1]] - 20.0) == 10.0


def test_plane_confidence_is_the_gap_to_the_best_separate_summit():
    from VoteMILib.voting import plane_confidence

    positions = np.arange(40, dtype=float) * 2.0
    one = np.exp(-0.5 * ((positions - 20.0) / 8.0) ** 2)
    two = one + 0.4 * np.exp(-0.5 * ((positions - 66.0) / 3.0) ** 2)
    assert plane_confidence(one, positions, 10, 10.0) == 1.0
    assert plane_confidence(two, positions, 10, 10.0) == pytest.approx(1.0 - two[33] / two[10])
    assert plane_confidence(np.zeros(40), positions, 0, 10.0) == 0.0


def test_findings_ties_do_not_go_to_the_middle_of_the_field_of_view():
    """Two equal summits: the findings pick goes to the one with the broader evidence, wherever it lies;
    the paper's vote keeps its tie-break toward the middle."""
    positions = np.arange(21, dtype=float) * 5.0
    scores = np.zeros(21)
    scores[[3, 10]] = 1.0
    scores[[2, 4]] = 0.6  # the summit at index 3 (far from the middle) is broader
    scores[[9, 11]] = 0.2
    assert pick_top_slices(scores, positions, 1, 10.0, peaks_first=True) == [3]
    assert pick_top_slices(scores, positions, 1, 10.0) == [10]
