"""``votemi describe`` and ``votemi serve`` from the command line."""

import json
import os
import re

from vlm_fixtures import complete_json, decode_png, openai_images_and_texts, position_pattern
from VoteMILib.cli import main
from VoteMILib.vlm import NOTICE


def test_describe_streams_report_and_writes_json(scripted_server, image_path, tmp_path, capsys):
    out = tmp_path / "out.json"
    code = main(["describe", image_path, "--server", scripted_server.url, "--model", "tiny-vlm",
                 "--slices-per-plane", "2", "--long-side", "80", "--json", str(out), "--png-dir", str(tmp_path / "png"),
                 "--report", str(tmp_path / "report.md"), "--language", "Spanish"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert NOTICE in captured.out and "Findings: normal [A1]." in captured.out
    document = json.loads(out.read_text(encoding="utf-8"))
    selected = [s for plane in document["planes"].values() for s in plane["selected"]]
    assert len(selected) == 6 and "settings" in document and "size_ijk" in document
    meta = document["report_meta"]
    assert document["report"].startswith("Findings") and meta["notice"] == NOTICE and meta["complete"] is True
    assert [i["id"] for i in meta["images"]] == [s["id"] for s in selected]
    assert [i["position_mm"] for i in meta["images"]] == [s["position_mm"] for s in selected]
    assert len(document["pngs"]) == 6 and all(os.path.exists(p) for p in document["pngs"])
    assert (tmp_path / "report.md").read_text(encoding="utf-8").startswith(f"> **{NOTICE}**")
    body = scripted_server.chat_requests()[-1]
    images, texts = openai_images_and_texts(body)
    assert len(images) == 6 and all(max(decode_png(png).size) == 80 for png in images)
    for image in meta["images"]:
        where = position_pattern(image["plane"], image["position_mm"])
        assert any(re.match(rf"{image['id']}: {image['plane']}, {where}", text) for text in texts)
    assert "Spanish" in texts[-1]


def test_describe_options_reach_the_request(scripted_server, image_path, tmp_path, capsys, monkeypatch):
    template = tmp_path / "prompt.txt"
    template.write_text("List {image_ids} in {language}.")
    monkeypatch.setenv("MY_KEY", "k-1")
    scripted_server.script.append(complete_json("ok", protocol="ollama"))
    code = main(["describe", image_path, "--server", scripted_server.url, "--backend", "ollama", "--model", "m",
                 "--planes", "axial", "--slices-per-plane", "1", "--prompt-file", str(template),
                 "--api-key-env", "MY_KEY", "--no-stream", "--quiet", "--long-side", "64"])
    assert code == 0
    method, path, headers, body = scripted_server.requests[-1]
    assert path == "/api/chat" and headers["Authorization"] == "Bearer k-1" and body["stream"] is False
    intro, image, instruction = body["messages"]  # the one image in a message of its own, with its label
    assert len(image["images"]) == 1 and image["content"].startswith("A1: axial")
    assert instruction["content"] == "List A1 in English."
    assert capsys.readouterr().out.strip().endswith("ok")


def test_describe_dry_run_contacts_nobody(image_path, tmp_path, capsys):
    code = main(["describe", image_path, "--server", "http://127.0.0.1:9", "--dry-run", "--slices-per-plane", "1",
                 "--quiet", "--png-dir", str(tmp_path), "--long-side", "64"])
    assert code == 0
    assert "Image 3: S1: sagittal" in capsys.readouterr().out
    assert len(list(tmp_path.glob("*.png"))) == 3


def test_describe_failures_are_one_line(image_path, capsys):
    code = main(["describe", image_path, "--server", "http://127.0.0.1:9", "--model", "m", "--quiet",
                 "--slices-per-plane", "1", "--long-side", "64", "--timeout", "5"])
    err = capsys.readouterr().err.strip()
    assert code == 1 and err.startswith("votemi: error: http://127.0.0.1:9: connection refused")
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert main(["describe", image_path, "--long-side", "8", "--quiet"]) == 2
    assert "long side" in capsys.readouterr().err


def test_serve_missing_model_is_one_line(tmp_path, capsys):
    assert main(["serve", "--model", str(tmp_path / "absent"), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("votemi: error: model folder not found")


def test_serve_command_end_to_end(tiny_vlm_dir):
    from VoteMILib.vlm import DescribeSettings, list_models
    from vlm_fixtures import serve_process

    with serve_process(tiny_vlm_dir, api_key="abc") as url:
        assert list_models(DescribeSettings(server_url=url, api_key="abc")) == [os.path.basename(tiny_vlm_dir)]
