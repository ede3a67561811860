"""``votemi eval`` end to end against a real ``votemi serve`` (the tiny random model: its answers are noise, so
the tests check files, shapes, intervals and determinism, never scores), and its parts on known inputs."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("distributed", reason="needs Dask (pip install -e .[eval])")

from VoteMILib import eval_scores  # noqa: E402
from VoteMILib.evaluate import (REDUNDANCY_MAD, STRATEGIES, axial_indices, non_redundant_axial,  # noqa: E402
                                 spread_over, strategy_rng)

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")
needs_data = pytest.mark.skipif(not os.path.isdir(DATA), reason="needs ../shared/data")
BRAIN = os.path.join(DATA, "pyradiomics_brain1", "image.nrrd")


def _has_wordnet():
    try:
        return bool(eval_scores.wordnet_folder())
    except eval_scores.ScoreError:
        return False


needs_wordnet = pytest.mark.skipif(not _has_wordnet(), reason="METEOR needs WordNet (apt-get install wordnet-base)")


def _eval(*args):
    done = subprocess.run([sys.executable, "-m", "VoteMILib.cli", "eval", *map(str, args)], capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    return done.returncode, done.stdout, done.stderr


def _rows(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A closed-question and a report dataset on two real brain MRIs, image paths relative to the CSV."""
    folder = tmp_path_factory.mktemp("eval-data")
    images = [os.path.relpath(os.path.join(DATA, case, "image.nrrd"), folder)
              for case in ("pyradiomics_brain1", "pyradiomics_brain2")]
    closed = folder / "closed.csv"
    closed.write_text("image,question,choices,answer\n"
                      f"{images[0]},Is there an enhancing tumour?,yes|no,yes\n"
                      f"{images[1]},Which lobe holds the lesion?,frontal|parietal|temporal|occipital,frontal\n",
                      encoding="utf-8")
    report = folder / "report.csv"
    report.write_text("image,report\n"
                      f"{images[0]},Enhancing mass in the left hemisphere with surrounding oedema.\n"
                      f"{images[1]},Small enhancing lesion; no midline shift.\n", encoding="utf-8")
    return closed, report


@pytest.fixture(scope="module")
def server(tiny_vlm_dir):
    from vlm_fixtures import serve_process

    with serve_process(tiny_vlm_dir) as url:
        yield url


COMMON = ("--long-side", 64, "--max-tokens", 4, "--workers", 1, "--bootstrap", 200)


@needs_data
def test_eval_closed_questions_against_votemi_serve(tmp_path, datasets, server):
    closed, _ = datasets
    out = tmp_path / "closed"
    code, stdout, stderr = _eval(closed, "--server", server, "--out", out, "--budgets", "1,2", *COMMON)
    assert code == 0, stderr
    assert "2/2 cases (0 failed, 0 skipped)" in stderr and "| voted |" in stdout
    assert "images: 9 or more per request" in stderr  # the server's probe: no budget left out
    answers = _rows(out / "answers.csv")
    assert len(answers) == 2 * 5 * 2  # cases x strategies x budgets
    assert {(a["strategy"], a["budget"]) for a in answers} == {(s, b) for s in STRATEGIES for b in ("1", "2")}
    assert all(a["images"] == a["budget"] and not a["error"] and a["accuracy"] in ("0.0", "1.0") for a in answers)
    results = _rows(out / "results.csv")
    assert len(results) == (5 + 4) * 2  # strategies and voted-minus-others, by budget, one metric
    for row in results:
        low, mean, high = float(row["ci_low"]), float(row["mean"]), float(row["ci_high"])
        assert row["metric"] == "accuracy" and row["cases"] == "2" and low <= mean <= high
        assert (-1.0 if row["strategy"].startswith("voted-minus") else 0.0) <= low and high <= 1.0
    table = (out / "results.md").read_text(encoding="utf-8")
    assert "## accuracy" in table and "| middle |" in table and "| voted-minus-random |" in table
    assert "| deduplicated |" in table and "| voted-minus-deduplicated |" in table
    from PIL import Image

    with Image.open(out / "results.png") as plot:
        assert plot.format == "PNG" and plot.size == (500, 400)

    # The same seed, another output folder: the same random slices and the same answers.
    again = tmp_path / "again"
    code, _, stderr = _eval(closed, "--server", server, "--out", again, "--budgets", "2", "--strategies", "random",
                            *COMMON)
    assert code == 0, stderr
    first = {(a["case"], a["slices"], a["text"]) for a in answers if a["strategy"] == "random" and a["budget"] == "2"}
    assert {(a["case"], a["slices"], a["text"]) for a in _rows(again / "answers.csv")} == first


@needs_data
@needs_wordnet
def test_eval_reports_with_a_user_scorer(tmp_path, datasets, server):
    _, report = datasets
    scorer = tmp_path / "length.py"
    scorer.write_text("import json, sys\nitem = json.load(sys.stdin)\nprint(len(item['prediction']) + "
                      "len(item['report']) / 1000)\n", encoding="utf-8")
    out = tmp_path / "report"
    code, _, stderr = _eval(report, "--server", server, "--out", out, "--budgets", "3", "--strategies",
                            "voted,uniform", "--scorer", f"{sys.executable} {scorer}", *COMMON)
    assert code == 0, stderr
    assert len(_rows(out / "answers.csv")) == 4
    references = {row["image"]: row["report"] for row in _rows(report)}
    with open(out / "summary.jsonl", encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    for record in records:
        reference = next(text for image, text in references.items() if record["image"].endswith(image[2:]))
        for answer in record["answers"]:
            assert all(0.0 <= answer[m] <= 1.0 for m in ("rouge_l", "bleu", "meteor"))
            assert answer["user"] == pytest.approx(len(answer["text"]) + len(reference) / 1000)
    metrics = {row["metric"] for row in _rows(out / "results.csv")}
    assert metrics == {"rouge_l", "bleu", "meteor", "user"}
    voted = next(a for a in records[0]["answers"] if a["strategy"] == "voted")
    assert [s.split()[0] for s in voted["slices"]] == ["axial", "coronal", "sagittal"]  # rank 1 of each plane


def test_no_server_is_one_line(tmp_path, datasets):
    code, _, stderr = _eval(datasets[0], "--server", "http://127.0.0.1:9", "--out", tmp_path / "out")
    assert code == 1 and stderr.count("\n") == 1 and stderr.startswith("votemi: error: ")


def test_a_bad_dataset_is_one_line(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("image,question,choices,answer\nx.nii.gz,Mass?,yes|no,maybe\n", encoding="utf-8")
    code, _, stderr = _eval(path, "--out", tmp_path / "out")
    assert code == 1 and stderr.strip() == ("votemi: error: " + str(path) + " line 2: the answer 'maybe' is not one "
                                            "of the choices yes | no")


@pytest.mark.parametrize("answer, picked", [
    ("B", 1), ("(B) no", 1), ("b) no", 1), ("Answer: A.", 0), ("The answer is C: temporal", 2),
    ("Yes, an enhancing mass.", 0), ("no enhancing tumour is seen", 1), ("A mass in the frontal lobe", None),
    ("left lower lobe", 3), ("nothing to say", None), ("", None)])
def test_closed_answers_are_read_robustly(answer, picked):
    choices = ["yes", "no", "temporal", "left lower lobe", "left"]
    assert eval_scores.parse_choice(answer, choices) == picked


def test_slice_strategies_and_bootstrap():
    assert axial_indices("uniform", 100, 4) == [12, 37, 62, 87]
    assert axial_indices("uniform", 10, 85) == list(range(10))  # a budget above the stack sends every slice
    assert axial_indices("middle", 25, 1) == [12] and axial_indices("middle", 25, 3) == [11, 12, 13]
    drawn = axial_indices("random", 60, 9, strategy_rng(0, "case", 9))
    assert drawn == axial_indices("random", 60, 9, strategy_rng(0, "case", 9)) and len(set(drawn)) == 9
    assert drawn != axial_indices("random", 60, 9, strategy_rng(1, "case", 9))
    values = np.array([0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0])
    mean, low, high = eval_scores.bootstrap_mean(values, 2000, np.random.default_rng(0))
    assert mean == pytest.approx(0.625) and 0.2 < low < mean < high <= 1.0
    assert eval_scores.bootstrap_mean([0.5] * 5, 100, np.random.default_rng(0)) == pytest.approx((0.5, 0.5, 0.5))


@needs_data
def test_the_redundancy_drop_keeps_one_of_repeated_slices_and_every_change():
    """MedPruner's first stage on a real brain: each axial slice repeated three times is kept once; a slice that
    differs from the last kept one by at least the threshold (on 0-1 intensities) is kept."""
    from VoteMILib.geometry import canonical_array
    from VoteMILib.volumes import load_volume, volume_from_array

    brain = load_volume(BRAIN)
    axial = canonical_array(brain.array, brain.ijk_to_ras)  # (R, A, S)
    middle = np.linspace(0.3, 0.7, 5) * axial.shape[2]
    stack = np.repeat(np.ascontiguousarray(axial[:, :, middle.astype(int)]), 3, axis=2)  # 5 slices, each 3 times
    volume = volume_from_array(np.ascontiguousarray(stack.transpose(2, 1, 0)), np.diag([1.0, 1.0, 1.0, 1.0]))
    kept = non_redundant_axial(volume)
    unit = (stack - stack.min()) / float(stack.max() - stack.min())
    assert kept[0] == 0 and all(k % 3 == 0 for k in kept)  # never a repeat
    last = 0
    for k in range(3, 15, 3):  # each distinct slice: kept exactly when it differs enough from the last kept
        differs = np.mean(np.abs(unit[:, :, k] - unit[:, :, last])) >= REDUNDANCY_MAD
        assert (k in kept) == differs
        last = k if differs else last
    assert len(kept) >= 2
    assert spread_over(kept, 2) == [kept[int(0.5 * len(kept) / 2)], kept[int(1.5 * len(kept) / 2)]]
    assert spread_over(kept, 99) == kept


@needs_wordnet
def test_report_metrics_from_the_system_wordnet():
    same = eval_scores.report_scores("Enhancing mass in the left lobe.", "Enhancing mass in the left lobe.")
    assert same["rouge_l"] == pytest.approx(1.0) and same["bleu"] == pytest.approx(1.0) and same["meteor"] > 0.9
    # METEOR credits a WordNet synonym (tumour / tumor), BLEU does not.
    synonym = eval_scores.report_scores("the tumour grows", "the tumor grows")
    other = eval_scores.report_scores("the lesion grows", "the tumor grows")
    assert synonym["meteor"] > other["meteor"] and synonym["bleu"] == pytest.approx(other["bleu"])
    assert eval_scores.report_scores("", "a report") == {"rouge_l": 0.0, "bleu": 0.0, "meteor": 0.0}
