"""The experimental generic selector (issue 31): ``votemi train-selector`` on real scans with masks, the model
file, ``votemi select --selector`` and its errors."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import cli
from VoteMILib.selector_candidates import DESCRIPTORS, find_candidates
from VoteMILib.voting import plane_confidence
from VoteMILib.selector_model import (SHIPPED_MODEL, SelectorModel, fit_logistic, load_selector, plane_picks,
                                      plane_scores, working_slice_logits)

SARCOMA = ef.DATA / "sarcoma"
#: Small real crops with expert masks: a CT and an MR T1 of one sarcoma patient, and another patient's MR.
TRAIN_CASES = ("sts002_ct", "sts002_mr_t1", "sts011_mr_t1")
SELECT_CASE = SARCOMA / "sts005_mr_t1" / "image.nii.gz"


def _cases_folder(tmp_path, names=TRAIN_CASES):
    """A cases folder whose table points at the real scans (case names as in ../shared)."""
    folder = tmp_path / "cases"
    folder.mkdir()
    rows = ["case\timage\tmask\textra"]
    for name in names:
        base = SARCOMA / name
        (folder / name).mkdir()
        for file in ("image.nii.gz", "mask.nii.gz"):
            (folder / name / file).write_bytes((base / file).read_bytes())
        rows.append(f"{name}\timage.nii.gz\tmask.nii.gz\t")
    (folder / "cases.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A model fitted by the command on the small real set (path, printed output)."""
    tmp_path = tmp_path_factory.mktemp("selector")
    model = tmp_path / "model.npz"
    folder = _cases_folder(tmp_path)
    assert cli.main(["train-selector", str(folder), "--out", str(model)]) == 0
    return model, folder


def test_train_selector_fits_and_the_file_round_trips(trained, tmp_path):
    path, folder = trained
    model = load_selector(path)
    assert model.names == DESCRIPTORS
    assert np.all(np.isfinite(model.coef)) and np.any(model.coef != 0)
    copy = tmp_path / "copy.npz"
    model.save(copy)
    again = load_selector(copy)
    for name in ("mean", "scale", "coef"):
        np.testing.assert_array_equal(getattr(again, name), getattr(model, name))
    assert again.intercept == model.intercept and again.note == model.note
    # Fitting is deterministic: the same data give the same file's coefficients.
    refit = tmp_path / "refit.npz"
    assert cli.main(["train-selector", str(folder), "--out", str(refit), "--quiet"]) == 0
    np.testing.assert_array_equal(load_selector(refit).coef, model.coef)


def test_fitted_model_ranks_lesion_candidates_above_the_rest(trained):
    """On a scan it was fitted on, candidates labelled as the lesion score higher than the others on average."""
    from VoteMILib.datasets import load_mask
    from VoteMILib.preprocess import make_working_grid
    from VoteMILib.selector_training import mask_on_grid, overlap_labels
    from VoteMILib.volumes import load_volume

    model = load_selector(trained[0])
    volume = load_volume(SARCOMA / "sts002_mr_t1" / "image.nii.gz")
    grid = make_working_grid(volume)
    candidates = find_candidates(grid)
    lesion = mask_on_grid(volume, load_mask(SARCOMA / "sts002_mr_t1" / "mask.nii.gz", volume), grid.data.shape)
    positive = overlap_labels(candidates.centres, candidates.radii_mm, lesion, grid.spacing_mm) > 0.5
    assert positive.any() and (~positive).any()
    probabilities = model.probabilities(candidates.descriptors)
    assert probabilities[positive].mean() > probabilities[~positive].mean()


def test_overlap_labels_teach_the_lesion_middle_not_its_rim():
    """A blob centred in the lesion is a positive in every plane; one whose centre is inside the mask but
    whose ball straddles the rim is not (the old centre-in-mask rule called both positives)."""
    from VoteMILib.selector_training import inside_share, overlap_labels

    lesion = np.zeros((40, 40, 40), bool)
    grid = np.indices(lesion.shape)
    lesion[((grid - 20) ** 2).sum(axis=0) <= 10 ** 2] = True  # a 10-voxel-radius ball, 1 mm voxels
    centres = np.array([[20, 20, 20], [20, 20, 30], [20, 20, 12], [5, 5, 5]])
    radii = np.array([6.0, 6.0, 3.0, 3.0])
    labels = overlap_labels(centres, radii, lesion, (1.0, 1.0, 1.0))
    assert labels[0] == 1.0
    assert labels[1] == 0.0  # centre inside, ball half out: a rim response
    # Inside but off the middle along the third axis: hits the two planes through that axis only.
    assert labels[2] == pytest.approx(2.0 / 3.0)
    assert labels[3] == 0.0
    assert inside_share(centres[0], 6.0, lesion, np.ones(3)) == 1.0
    assert 0.2 < inside_share(centres[1], 6.0, lesion, np.ones(3)) < 0.6


def _select_json(tmp_path, name, *options):
    out = tmp_path / f"{name}.json"
    assert cli.main(["select", str(SELECT_CASE), "--quiet", "--json", str(out), *options]) == 0
    return json.loads(out.read_text(encoding="utf-8"))


def _picks(document):
    return {plane: [pick["index"] for pick in entry["selected"]] for plane, entry in document["planes"].items()}


def test_selector_option_changes_picks_deterministically(trained, tmp_path):
    first = _select_json(tmp_path, "first", "--selector", str(trained[0]))
    second = _select_json(tmp_path, "second", "--selector", str(trained[0]))
    default = _select_json(tmp_path, "default")
    assert _picks(first) == _picks(second)
    assert {entry["cue"] for entry in first["planes"].values()} == {"selector"}
    assert first["settings"]["mode"] == "selector" and first["settings"]["selector"]["kind"] == "logistic"
    assert "selector" not in {entry["cue"] for entry in default["planes"].values()}
    assert _picks(first) != _picks(default)


@pytest.mark.parametrize("content", [b"not a zip file at all", None])
def test_bad_model_file_is_a_one_line_error(tmp_path, capsys, content):
    bad = tmp_path / "bad.npz"
    if content is None:
        np.savez(bad, coef=np.zeros(3))  # a real .npz, but not a selector model
    else:
        bad.write_bytes(content)
    assert cli.main(["select", str(SELECT_CASE), "--quiet", "--selector", str(bad)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "selector model" in error and str(bad) in error


def test_selector_with_a_guide_is_refused(trained, tmp_path, capsys):
    mask = SARCOMA / "sts005_mr_t1" / "mask.nii.gz"
    assert cli.main(["select", str(SELECT_CASE), "--quiet", "--selector", str(trained[0]), "--mask", str(mask)]) == 1
    assert "--selector" in capsys.readouterr().err


def test_logistic_fit_separates_and_penalty_shrinks():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = (x[:, 0] - 0.5 * x[:, 1] > 0).astype(float)
    weak = fit_logistic(x, y, np.ones(len(y)), l2=10.0, names=("a", "b"))
    strong = fit_logistic(x, y, np.ones(len(y)), l2=0.01, names=("a", "b"))
    assert strong.coef[0] > 0 > strong.coef[1]
    assert np.linalg.norm(weak.coef) < np.linalg.norm(strong.coef)
    assert np.mean((strong.probabilities(x) > 0.5) == (y > 0.5)) > 0.95
    with pytest.raises(ValueError, match="both inside and outside"):
        fit_logistic(x, np.zeros(len(y)), np.ones(len(y)))


def test_slice_profile_peaks_through_the_best_candidate_centre():
    centres = np.array([[5, 5, 10], [5, 5, 30]])
    logits = np.array([-1.0, 2.0])
    profile = working_slice_logits(centres, np.array([6.0, 6.0]), logits, 2, 40, 2.0)
    assert int(np.argmax(profile)) == 30 and profile[30] == pytest.approx(2.0)
    # Off the centre a candidate counts with half the log of its section share: 2 mm off a 6 mm ball, 8/9.
    assert profile[31] == pytest.approx(2.0 + 0.5 * np.log(8.0 / 9.0))
    assert profile[10] == pytest.approx(-1.0) and profile[20] == -np.inf


def test_candidates_whose_probabilities_both_saturate_rank_in_logit_order():
    # One descriptor, logit = x: 60 and 45 both give a probability of exactly 1.0 in float64.
    model = SelectorModel(("x",), np.zeros(1), np.ones(1), np.ones(1), 0.0)
    descriptors = np.array([[45.0], [60.0]])
    assert np.all(model.probabilities(descriptors) == 1.0)
    assert list(model.logits(descriptors)) == [45.0, 60.0]
    # The weaker candidate comes first in the array and at the lower slice: a tie would go to it.
    centres = np.array([[5, 5, 8], [5, 5, 30]])
    positions = np.arange(40) * 2.0
    scores = plane_scores(centres, np.array([6.0, 6.0]), model.logits(descriptors), 2, 40, 2.0, positions, positions)
    picks, spacing = plane_picks(scores, positions, 2)
    assert picks == [30, 8]
    # Scores stay in 0..1: the top is 1 and the rival is its odds against the top's, exp(45 - 60).
    assert scores.max() == 1.0 and scores.min() >= 0.0
    assert scores[8] == pytest.approx(np.exp(-15.0))
    assert plane_confidence(scores, positions, picks[0], spacing) == pytest.approx(1.0 - np.exp(-15.0))


def test_plane_scores_without_candidates_are_zero():
    positions = np.arange(10) * 2.0
    scores = plane_scores(np.zeros((0, 3), int), np.zeros(0), np.zeros(0), 2, 10, 2.0, positions, positions)
    assert scores.shape == (10,) and not scores.any()


def test_shipped_model_loads():
    assert os.path.exists(SHIPPED_MODEL)
    assert load_selector(SHIPPED_MODEL).names == DESCRIPTORS


def test_an_older_model_file_asks_to_be_refitted(tmp_path, capsys):
    old = tmp_path / "old.npz"
    count = len(DESCRIPTORS) - 1  # the first format had no cue_evidence
    np.savez(old, version=np.int64(1), names=np.array(DESCRIPTORS[:-1]), mean=np.zeros(count), scale=np.ones(count),
             coef=np.zeros(count), intercept=np.float64(0.0), note=np.array(""))
    assert cli.main(["select", str(SELECT_CASE), "--quiet", "--selector", str(old)]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "format version 1" in error and "train-selector" in error


def test_stands_out_threshold_separates_lesions_from_clear_candidates():
    """The fitted threshold sits between each lesion's best candidate and the best candidate clear of
    any lesion, wherever the logistic's own 0.5 would fall."""
    from VoteMILib.selector_model import SelectorModel
    from VoteMILib.selector_training import ScanRecord, stands_out_threshold

    # One descriptor, probability = sigmoid(x): lesions' best at x = 3, clear candidates' best at x = 1.
    model = SelectorModel(("x",), np.zeros(1), np.ones(1), np.ones(1), 0.0)

    def record(values, labels, clear):
        return ScanRecord("s", "src", np.array(values, float)[:, None], np.array(labels, float), np.array(clear),
                          np.zeros((len(values), 3), int), np.ones(len(values)), (1, 1, 1), np.ones(3), {})

    records = [record([3.0, 1.0, -2.0], [1, 0, 0], [False, True, True]),
               record([3.2, 0.8], [1, 0], [False, True]),
               record([1.1, -1.0], [0, 0], [True, True])]
    threshold = stands_out_threshold(records, model)
    sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    assert sigmoid(1.1) < threshold <= sigmoid(3.0)


def test_cue_evidence_is_a_descriptor_and_fires_on_a_body_lesion():
    """Today's cues enter as the last descriptor: 0 without their map, their map's value with it."""
    from VoteMILib.cues import detect_region
    from VoteMILib.modality import detect_modality
    from VoteMILib.preprocess import make_working_grid
    from VoteMILib.selector_cues import cue_evidence
    from VoteMILib.volumes import load_volume

    volume = load_volume(SELECT_CASE)
    grid = make_working_grid(volume)
    evidence = cue_evidence(grid, detect_region(grid, detect_modality(volume)))
    assert evidence.shape == grid.data.shape and evidence.max() >= 1.0  # a cue stands out on this sarcoma
    column = DESCRIPTORS.index("cue_evidence")
    without, with_cues = find_candidates(grid), find_candidates(grid, evidence)
    assert np.all(without.descriptors[:, column] == 0.0) and with_cues.descriptors[:, column].max() > 0.0
    np.testing.assert_array_equal(without.descriptors[:, :column], with_cues.descriptors[:, :column])


def test_bench_leave_one_source_out_scores_each_source_with_a_fit_without_it(tmp_path, capsys):
    """``votemi bench --leave-one-source-out``: two sources (sarcoma CT, sarcoma MR T1), each scored by a combiner
    that never saw it; the JSON carries the same numbers as the printed table."""
    from VoteMILib.datasets import bench_cases
    from VoteMILib.selector_bench import judge_selector
    from VoteMILib.selector_training import leave_one_source_out

    # Each source keeps lesion candidates when the other is held out (sts002_ct has none under overlap labels).
    folder = _cases_folder(tmp_path, ("sts035_ct", "sts002_mr_t1", "sts011_mr_t1"))
    out = tmp_path / "loso.json"
    assert cli.main(["bench", str(folder), "--leave-one-source-out", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| ibsi-sarcoma-ct | 1 |" in printed and "| ibsi-sarcoma-mr-t1 | 2 |" in printed
    assert "| mean over 2 sources |" in printed
    document = json.loads(out.read_text(encoding="utf-8"))["leave_one_source_out"]
    assert set(document["by_source"]) == {"ibsi-sarcoma-ct", "ibsi-sarcoma-mr-t1"}
    assert {case["source"] for case in document["by_case"].values()} == set(document["by_source"])
    # Held out means held out: the CT's score is the same whatever the CT's own labels were (a fit without it).
    cases = bench_cases([str(folder)])
    judged = judge_selector(cases)
    records = {record.name: record for record in judged.records}
    records["sts035_ct"].labels[:] = 1.0 - records["sts035_ct"].labels
    assert leave_one_source_out(judged.records)["sts035_ct"] == judged.scores["sts035_ct"]


def test_bench_leave_one_source_out_without_masks_is_one_line(tmp_path, capsys):
    folder = tmp_path / "nomask"
    (folder / "scan").mkdir(parents=True)
    (folder / "scan" / "image.nii.gz").write_bytes((SARCOMA / "sts002_ct" / "image.nii.gz").read_bytes())
    assert cli.main(["bench", str(folder), "--leave-one-source-out"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "needs cases with lesion masks" in error


def test_a_case_lesion_free_slab_is_a_negative_of_its_own_source():
    """The slab 30 mm from the mask: every candidate negative, never scored, and of its case's source, so that a
    fit holding that source out leaves the slab out too; a case with no such slab gives none."""
    from VoteMILib.datasets import load_mask
    from VoteMILib.selector_training import SLAB_SUFFIX, slab_record
    from VoteMILib.volumes import load_volume

    volume = load_volume(SARCOMA / "sts002_ct" / "image.nii.gz")
    mask = load_mask(SARCOMA / "sts002_ct" / "mask.nii.gz", volume)
    slab = slab_record("sts002_ct", volume, mask, "ibsi-sarcoma-ct")
    assert slab is not None and slab.name == "sts002_ct" + SLAB_SUFFIX and slab.source == "ibsi-sarcoma-ct"
    assert len(slab.labels) > 0 and not slab.labels.any() and slab.clear.all() and not slab.has_lesion
    # Its candidates lie on a grid smaller than the scan's (a slab, not the scan again).
    assert np.prod(slab.grid_shape) < np.prod(_grid_shape(volume))
    # sts002_mr_t1 has no 8 slices 30 mm from its mask: no slab.
    other = load_volume(SARCOMA / "sts002_mr_t1" / "image.nii.gz")
    assert slab_record("sts002_mr_t1", other, load_mask(SARCOMA / "sts002_mr_t1" / "mask.nii.gz", other),
                       "ibsi-sarcoma-mr-t1") is None


def _grid_shape(volume):
    from VoteMILib.preprocess import make_working_grid

    return make_working_grid(volume).data.shape


def test_training_records_carry_slabs_unless_told_not_to(trained):
    from VoteMILib.selector_training import SLAB_SUFFIX, collect_records

    folder = trained[1]
    with_slabs = collect_records([str(folder)])
    without = collect_records([str(folder)], slabs=False)
    names = [record.name for record in with_slabs]
    assert names == ["sts002_ct", "sts002_ct" + SLAB_SUFFIX, "sts002_mr_t1", "sts011_mr_t1"]
    assert [record.name for record in without] == ["sts002_ct", "sts002_mr_t1", "sts011_mr_t1"]
    assert "1 lesion-free slabs" in load_selector(trained[0]).note


def test_a_tumour_above_4_cm_gets_a_candidate_of_its_size_at_its_centre():
    """A 6 cm ball (radius 30 mm) in noise: the 32 mm scale, filtered on the half-sampled grid, finds it within
    a coarse voxel of its centre."""
    from types import SimpleNamespace

    rng = np.random.default_rng(0)
    shape, spacing = (72, 72, 72), np.array([2.0, 2.0, 2.0])
    data = rng.normal(0.0, 0.2, shape).astype(np.float32)
    centre = np.array([37, 34, 36])
    grid_mm = np.stack(np.meshgrid(*[np.arange(n) * 2.0 for n in shape], indexing="ij"), axis=-1)
    data[np.linalg.norm(grid_mm - centre * 2.0, axis=-1) <= 30.0] += 1.0
    grid = SimpleNamespace(data=data, mask=np.ones(shape, bool), spacing_mm=tuple(spacing))
    candidates = find_candidates(grid)
    large = candidates.radii_mm == 32.0
    assert large.any()
    nearest = np.min(np.linalg.norm((candidates.centres[large] - centre) * spacing, axis=1))
    assert nearest <= 2.0 * np.sqrt(3) * 2.0  # a coarse voxel's diagonal (4 mm a side)
    # Its ball, sampled every second voxel, is filled by the tumour: compact, as a whole tumour should be.
    best = np.flatnonzero(large)[np.argmin(np.linalg.norm((candidates.centres[large] - centre) * spacing, axis=1))]
    assert candidates.descriptors[best, DESCRIPTORS.index("compactness")] > 0.5
