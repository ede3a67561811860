"""A plane where nothing stood out is said to be representative anatomy, never shown as a finding's slice.

On real selections of real scans: Colin27 (a healthy brain, where nothing stands out in any plane), a lesion-free
prostate MRI of ../shared/data/pelvis (where only the sagittal plane's tissue contrast stands out) and the main
glioma case. Each surface is checked: the prompt's labels and instruction, the terminal summary, the HTML page,
the DICOM SR (here) and the panel's table and status line (test_slicer_widget.py).
"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import engine_fixtures as ef
from vlm_fixtures import ScriptedServer, complete_json
from VoteMILib.results import NOTHING_STOOD_OUT, outcome_text
from VoteMILib.vlm.pipeline import DescribeSettings, build_request
from VoteMILib.vlm.prompts import NOTHING_STOOD_OUT_LABEL, STOOD_OUT_LABEL

#: Lesion-free prostate T2: the axial and coronal planes fall back, the sagittal plane's tissue contrast stands out.
MIXED = ef.DATA / "pelvis" / "prostatex_0001_t2" / "image.nii.gz"
NO_LESION_SENTENCE = "Do not assume a lesion"
ANSWER = "Findings:\n- Normal anatomy [A1].\nImpression: No abnormality [A1]."


@functools.lru_cache(maxsize=None)
def _selected(path: str, mode: str = "findings"):
    from VoteMILib.selection import select_slices
    from VoteMILib.volumes import load_volume

    volume = load_volume(path)
    return volume, select_slices(volume, top_k=2, seed=0, mode=mode)


def _prompt(path, mode="findings"):
    volume, selection = _selected(str(path), mode)
    return build_request(volume, selection, DescribeSettings(model="m", long_side=96)), selection


def _labels_by_plane(prompt) -> dict:
    labels = {}
    for image in prompt.images:
        labels.setdefault(image.plane, []).append(image.label)
    return labels


def test_a_healthy_brain_is_shown_as_representative_anatomy_and_the_model_told_not_to_assume_a_lesion():
    assert ef.COLIN27.exists(), "apt-get install mricron-data"
    prompt, selection = _prompt(ef.COLIN27)
    assert all(result.stood_out is False for result in selection.planes.values())
    assert all(image.label.endswith(f"; {NOTHING_STOOD_OUT_LABEL}") for image in prompt.images)
    assert "Nothing stood out to the automatic selection in any plane" in prompt.instruction
    assert NO_LESION_SENTENCE in prompt.instruction and "candidate finding" not in prompt.instruction


def test_planes_that_stood_out_and_planes_that_fell_back_are_told_apart():
    prompt, selection = _prompt(MIXED)
    standing = {plane: result.stood_out for plane, result in selection.planes.items()}
    assert standing == {"axial": False, "coronal": False, "sagittal": True}
    labels = _labels_by_plane(prompt)
    assert all(label.endswith(f"; {NOTHING_STOOD_OUT_LABEL}") for label in labels["axial"] + labels["coronal"])
    assert all(label.endswith(f"; {STOOD_OUT_LABEL}") for label in labels["sagittal"])
    assert ("Something stood out to the automatic selection in the sagittal plane: its images show a candidate "
            "finding") in prompt.instruction
    assert ("Nothing stood out in the axial and coronal planes: their images show representative anatomy, "
            "not a finding.") in prompt.instruction
    assert NO_LESION_SENTENCE not in prompt.instruction


def test_representative_mode_and_guided_runs_keep_their_prompt():
    prompt, selection = _prompt(ef.COLIN27, mode="representative")
    assert all(result.stood_out is None for result in selection.planes.values())
    assert "stood out" not in prompt.flat_text()

    from VoteMILib.guided import make_guide, select_guided

    volume, _ = _selected(str(ef.COLIN27))
    centre = volume.ijk_to_ras[:3, :3] @ (np.asarray(volume.size_ijk) / 2.0) + volume.ijk_to_ras[:3, 3]
    guide = make_guide(volume, None, points=[tuple(float(c) for c in centre)])
    for then in (None, "findings"):  # the point alone, and with the best unsupervised pick outside it
        guided = select_guided(volume, guide, top_k=1, mode=then)
        prompt = build_request(volume, guided, DescribeSettings(model="m", long_side=96))
        assert prompt.images[0].label.endswith("showing the marked point")
        assert "stood out" not in prompt.flat_text()


def test_the_terminal_summary_says_per_plane_what_stood_out_with_the_confidence():
    done = ef.run_votemi("select", ef.COLIN27, "--slices-per-plane", "1")
    assert done.returncode == 0, done.stderr
    _, selection = _selected(str(ef.COLIN27))
    for plane, result in selection.planes.items():
        line = f"{plane}: {NOTHING_STOOD_OUT}, confidence {result.confidence:.2f}"
        assert line in done.stdout.splitlines(), done.stdout
    done = ef.run_votemi("select", MIXED, "--slices-per-plane", "1")
    assert done.returncode == 0, done.stderr
    assert "sagittal: tissue_contrast stood out, confidence 0.02" in done.stdout.splitlines(), done.stdout
    assert f"axial: {NOTHING_STOOD_OUT}, confidence 0.11" in done.stdout.splitlines(), done.stdout


def _describe(image, out, *more):
    """``votemi describe`` of ``image`` against a loopback server; the chat request it sent and its JSON."""
    with ScriptedServer() as server:
        server.script.append(complete_json(ANSWER))
        done = subprocess.run([sys.executable, "-m", "VoteMILib.cli", "describe", str(image), "--server", server.url,
                               "--slices-per-plane", "1", "--long-side", "96", "--no-stream", "--quiet",
                               "--json", str(out / "report.json"), *more],
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        chat, = [request for request in server.requests if request[0] == "POST"]
    return chat[3], json.loads((out / "report.json").read_text(encoding="utf-8"))


def _outcome(plane_data: dict) -> dict:
    """A plane of the selection JSON as :meth:`PlaneResult.outcome` gives it."""
    return {key: plane_data[key] for key in ("cue", "stood_out", "confidence")}


def _sent_text(body) -> str:
    texts = []
    for message in body["messages"]:
        content = message["content"]
        texts += [content] if isinstance(content, str) else [part.get("text", "") for part in content]
    return "\n".join(texts)


def test_the_html_report_and_the_prompt_sent_state_each_planes_outcome(tmp_path):
    body, document = _describe(MIXED, tmp_path, "--html", str(tmp_path / "report.html"))
    sent = _sent_text(body)
    assert "S1: sagittal" in sent and STOOD_OUT_LABEL in sent and NOTHING_STOOD_OUT_LABEL in sent
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "What stood out to the selection" in page
    for plane, data in document["planes"].items():
        expected = outcome_text(_outcome(data))
        assert f"<li>{plane.capitalize()}: {expected}</li>" in page
    assert f"<li>Axial: {NOTHING_STOOD_OUT}, confidence" in page
    assert "<li>Sagittal: tissue_contrast stood out, confidence" in page


def test_the_structured_report_of_a_healthy_brain_says_nothing_stood_out_in_any_plane(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    pytest.importorskip("highdicom")
    import SimpleITK as sitk

    series = tmp_path / "colin27"
    ef.write_dicom_series(sitk.ReadImage(str(ef.COLIN27), sitk.sitkInt16), series, description="Colin27 T1")
    body, document = _describe(series, tmp_path, "--dicom-out", str(tmp_path / "dicom"))
    assert NO_LESION_SENTENCE in _sent_text(body)
    sr = pydicom.dcmread(document["dicom_export"]["sr"])
    comments = [item.TextValue for item in sr.ContentSequence if "TextValue" in item]
    said = [text for text in comments if text.startswith("Selection, ")]
    expected = [f"Selection, {plane} plane: {outcome_text(_outcome(data))}" for plane, data in document["planes"].items()]
    assert said == expected and len(said) == 3
    assert all(f"{NOTHING_STOOD_OUT}, confidence" in text for text in said)


def test_the_generic_selector_says_nothing_stood_out_without_calling_its_picks_representative():
    """With --selector a plane whose best candidate stays under the threshold still shows that candidate: it is
    labelled by the selector, not as the representative vote (Colin27: nothing stands out)."""
    done = ef.run_votemi("select", ef.COLIN27, "--slices-per-plane", "1", "--selector",
                         str(Path(__file__).resolve().parents[1] / "VoteMI" / "Resources" / "selector_model.npz"))
    assert done.returncode == 0, done.stderr
    summary = [line for line in done.stdout.splitlines() if line.startswith(("axial:", "coronal:", "sagittal:"))]
    assert len(summary) == 3 and all("selector (nothing stood out), confidence" in line for line in summary)
    assert "representative" not in "\n".join(summary)
