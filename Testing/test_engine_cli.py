"""``votemi select`` end to end: the installed console script and ``cli.main`` on real scans."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from PIL import Image

import engine_fixtures as ef
from VoteMILib import cli
from VoteMILib.geometry import NORMAL_AXIS, PLANES

CASE = "tcga_fg_6692"


def check_document(document, image_path, planes, top_k):
    """The JSON shape of issue 2, value by value."""
    assert {"image", "size_ijk", "spacing_mm", "planes", "settings", "timing_s"} <= set(document)
    assert document["image"] == os.path.abspath(image_path)
    volume = ef.volume(CASE)
    assert document["size_ijk"] == list(volume.size_ijk)
    assert all(isinstance(n, int) for n in document["size_ijk"])
    assert len(document["spacing_mm"]) == 3
    np.testing.assert_allclose(document["spacing_mm"], volume.spacing_mm, atol=1e-5)
    assert list(document["planes"]) == list(planes)
    for plane in planes:
        entry = document["planes"][plane]
        assert entry["normal_axis"] == NORMAL_AXIS[plane]
        positions, scores = entry["positions_mm"], entry["scores"]
        assert all(isinstance(p, float) for p in positions) and all(isinstance(s, (int, float)) for s in scores)
        assert len(positions) == len(scores) > 0
        assert all(b > a for a, b in zip(positions, positions[1:])), f"{plane} positions not ascending"
        assert all(0.0 <= s <= 1.0 for s in scores)
        selected = entry["selected"]
        assert len(selected) == top_k
        for pick in selected:
            assert {"index", "position_mm", "score"} <= set(pick)
            assert isinstance(pick["index"], int) and 0 <= pick["index"] < len(positions)
            assert pick["position_mm"] == pytest.approx(positions[pick["index"]], abs=1e-3)
            assert pick["score"] == pytest.approx(scores[pick["index"]], abs=1e-6)
        picked = [p["score"] for p in selected]
        if entry["stood_out"] is None:  # the paper's vote: best first; findings picks hedge between summits
            assert picked == sorted(picked, reverse=True), "selected must be best first"
        assert picked[0] == pytest.approx(max(scores), abs=1e-6)
        assert 0.0 <= entry["confidence"] <= 1.0 and entry["stood_out"] in (None, True, False)
    assert isinstance(document["settings"], dict) and document["settings"]["top_k"] == top_k
    assert set(document["timing_s"]) >= {"load", "select"}
    assert all(isinstance(v, float) and v >= 0 for v in document["timing_s"].values())


def test_console_script_writes_json_and_pngs(tmp_path):
    image = ef.cases()[CASE]["image"]
    out = tmp_path / "out" / "selection.json"
    pngs = tmp_path / "pngs"
    run = ef.run_votemi("select", image, "--json", out, "--png-dir", pngs)
    assert run.returncode == 0, run.stderr
    assert "Traceback" not in run.stderr
    document = json.loads(out.read_text(encoding="utf-8"))
    check_document(document, image, PLANES, 3)
    # Same picks as the engine called directly with the defaults.
    reference = ef.selection(CASE)
    for plane in PLANES:
        assert [p["index"] for p in document["planes"][plane]["selected"]] == \
            [s.index for s in reference.planes[plane].selected]
    # The readable summary names every pick (A1..A3, C1.., S1..) and the files written.
    for label in ("A1", "A2", "A3", "C1", "C2", "C3", "S1", "S2", "S3"):
        assert label in run.stdout
    assert str(out) in run.stdout
    # One PNG per pick, listed in the JSON, each decoding to a grey image shaped like the slice in mm.
    files = sorted(pngs.glob("*.png"))
    assert len(files) == 9
    assert sorted(document["pngs"]) == sorted(os.path.abspath(f) for f in files)
    volume = ef.volume(CASE)
    extent = {"sagittal": (volume.size_ijk[2], volume.size_ijk[1]), "coronal": (volume.size_ijk[2], volume.size_ijk[0]),
              "axial": (volume.size_ijk[1], volume.size_ijk[0])}  # (rows, cols) of a 1 mm LPS scan
    for path in files:
        plane = next(p for p in PLANES if f"_{p}_" in path.name)
        with Image.open(path) as png:
            png.load()
            assert png.format == "PNG" and png.mode == "L"
            assert (png.height, png.width) == extent[plane]
            pixels = np.asarray(png)
        assert pixels.std() > 10, f"{path.name} looks blank"
        assert len(np.unique(pixels)) > 50, f"{path.name}: too few grey levels for a windowed MRI slice"


def test_main_planes_top_seed_and_quiet(tmp_path, capsys):
    image = ef.cases()[CASE]["image"]
    out = tmp_path / "coronal_axial.json"
    assert cli.main(["select", str(image), "--planes", "coronal,axial", "--slices-per-plane", "2", "--seed", "3",
                     "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "A1" in printed and "C2" in printed and "S1" not in printed
    document = json.loads(out.read_text(encoding="utf-8"))
    check_document(document, image, ("axial", "coronal"), 2)
    assert document["settings"]["seed"] == 3
    assert "pngs" not in document

    out = tmp_path / "sagittal.json"
    assert cli.main(["select", str(image), "--planes", "s", "--slices-per-plane", "1", "--quiet",
                     "--json", str(out)]) == 0
    assert capsys.readouterr().out == ""
    document = json.loads(out.read_text(encoding="utf-8"))
    check_document(document, image, ("sagittal",), 1)


def test_main_on_nrrd_with_thick_slices(tmp_path, capsys):
    # A real NRRD case (6.5 mm axial slices) through the same command, with PNGs.
    image = ef.cases()["pyradiomics_brain2"]["image"]
    out = tmp_path / "brain2.json"
    assert cli.main(["select", str(image), "--planes", "axial", "--slices-per-plane", "2", "--json", str(out),
                     "--png-dir", str(tmp_path / "png"), "--quiet"]) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    entry = document["planes"]["axial"]
    assert len(entry["positions_mm"]) == 23  # 23 thick axial slices
    assert [p["index"] for p in entry["selected"]] == sorted(
        [p["index"] for p in entry["selected"]], key=lambda i: -entry["scores"][i])
    assert len(list((tmp_path / "png").glob("*axial*.png"))) == 2


def test_help_and_version(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--version"])
    assert exit_info.value.code == 0
    assert "votemi" in capsys.readouterr().out
    assert cli.main([]) == 2  # no command: help, non-zero
    assert "select" in capsys.readouterr().out


def test_main_on_colin27_as_in_the_readme(tmp_path, capsys):
    # The README's first command runs on Debian's Colin27 T1 (mricron-data): a lesion-free real brain.
    assert ef.COLIN27.exists(), "apt-get install mricron-data"
    out = tmp_path / "colin27.json"
    assert cli.main(["select", str(ef.COLIN27), "--json", str(out), "--png-dir", str(tmp_path / "png")]) == 0
    assert "wrote 9 PNGs" in capsys.readouterr().out
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["size_ijk"] == [181, 217, 181]
    for plane in PLANES:
        entry = document["planes"][plane]
        assert entry["normal_axis"] == NORMAL_AXIS[plane]
        assert len(entry["positions_mm"]) == len(entry["scores"])
        assert len(entry["selected"]) == 3
    assert len(document["pngs"]) == 9
    for path in document["pngs"]:
        with Image.open(path) as png:
            assert png.mode == "L" and min(png.size) > 100


def test_mode_names_and_their_earlier_aliases():
    from VoteMILib.names import canonical_mode

    assert canonical_mode("findings") == "findings" and canonical_mode("votemi") == "findings"
    assert canonical_mode("Representative") == "representative" and canonical_mode("plain") == "representative"
    with pytest.raises(ValueError, match="findings, representative"):
        canonical_mode("best")
    with pytest.raises(SystemExit) as stopped:
        cli.main(["select", "/nonexistent.nii.gz", "--mode", "best"])
    assert stopped.value.code == 2


def test_building_the_command_line_loads_no_scipy():
    """``votemi --version`` and ``--help`` build the whole parser; none of it needs scipy (the
    selection engine loads it when a command runs)."""
    import subprocess
    import sys

    code = ("import sys; from VoteMILib.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('scipy', 'SimpleITK', 'PIL', 'torch') if m in sys.modules))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert shown.stdout.strip() == "[]", shown.stdout
