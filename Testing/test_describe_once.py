"""One describe renders each image once and checks its settings once, from the command line the Slicer
panel's child runs against a real ``votemi serve`` (a tiny random model on loopback)."""

import base64
import json
import os

import pytest

from VoteMILib import render
from VoteMILib.child_run import ChildRun, DescribeRequest, child_arguments
from VoteMILib.cli import main
from VoteMILib.vlm import DescribeSettings, describe
from VoteMILib.vlm.pipeline import RequestParts


@pytest.fixture
def counted(monkeypatch):
    """Calls of the one slice renderer (every PNG sent or written goes through it) and of the settings check."""
    counts = {"render": 0, "validate": 0}
    render_windowed, validate = render.render_windowed, DescribeSettings.validate

    def counted_render(*args, **kwargs):
        counts["render"] += 1
        return render_windowed(*args, **kwargs)

    def counted_validate(self):
        counts["validate"] += 1
        return validate(self)

    monkeypatch.setattr(render, "render_windowed", counted_render)
    monkeypatch.setattr(DescribeSettings, "validate", counted_validate)
    return counts


def test_the_childs_describe_renders_and_checks_once(tiny_vlm_dir, image_path, tmp_path, counted, capsys):
    from vlm_fixtures import serve_process

    html, document = tmp_path / "report.html", tmp_path / "run.json"
    with serve_process(tiny_vlm_dir) as url:
        arguments = child_arguments(ChildRun(image_path, slices_per_plane=2, describe=DescribeRequest(server=url)))
        code = main([*arguments, "--long-side", "64", "--max-tokens", "8", "--html", str(html),
                     "--json", str(document), "--png-dir", str(tmp_path / "png")])
    assert code in (0, 3), capsys.readouterr().err  # 3: the random model ran into the token limit
    images = json.loads(document.read_text(encoding="utf-8"))["report_meta"]["images"]
    assert len(images) == 6
    assert counted == {"render": 6, "validate": 1}
    # The page and the PNG folder hold the very images that were sent, not renderings of their own.
    page = html.read_text(encoding="utf-8")
    for name in os.listdir(tmp_path / "png"):
        png = (tmp_path / "png" / name).read_bytes()
        assert base64.b64encode(png).decode("ascii") in page


def test_describe_checks_its_settings_once(scripted_server, mri_volume, counted):
    from vlm_fixtures import make_selection

    selection = make_selection(mri_volume, top_k=1)
    settings = DescribeSettings(server_url=scripted_server.url, model="m", long_side=64)
    describe(mri_volume, selection, settings)
    assert counted == {"render": 3, "validate": 1}
    parts = RequestParts.prepare(mri_volume, selection, settings)
    describe(mri_volume, selection, settings, parts=parts)  # prepared and checked by the caller
    assert counted == {"render": 6, "validate": 1}
