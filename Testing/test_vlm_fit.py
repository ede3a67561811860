"""Fitting the servers people run: probing, contact sheets, the context sheet and worked examples.

Every request goes over real HTTP to ``votemi serve`` with the tiny random model, its limits set by its
options: one image per request, text-only, no JSON schema. Each combination ends with a report or a
one-line reason.
"""

import io
import json
import subprocess
import sys
import threading

import numpy as np
import pytest

from vlm_fixtures import make_selection, make_volume, serve_process
from VoteMILib.vlm import DescribeSettings, VLMError, build_request, describe
from VoteMILib.vlm import capabilities as caps_module
from VoteMILib.vlm.capabilities import cached, probe
from VoteMILib.vlm.packing import MIN_TILE_PX, contact_sheet, sheet_groups
from VoteMILib.vlm.pipeline import make_client
from VoteMILib.vlm.server import ServeFeatures, create_server

LONG_SIDE = 384  # sheets of 3x3 tiles of 128 px: readable tiles, small requests


def _thread_server(model, features=None, **limits):
    httpd = create_server(model, "127.0.0.1", 0, log=None, features=features, **limits)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def servers(tiny_vlm_dir):
    """URLs of: one image per request; no JSON schema and four images per request; one image per message; images
    accepted and dropped (all in this process, the model loaded once); and ``votemi serve --text-only
    --no-json-schema`` as a child process (its options)."""
    from VoteMILib.vlm.inprocess import load_model

    model = load_model(tiny_vlm_dir, device="cpu")
    started = [_thread_server(model, max_images=1),
               _thread_server(model, ServeFeatures(json_schema=False), max_images=4),
               _thread_server(model, ServeFeatures(images_per_message=1)),
               _thread_server(model, ServeFeatures(drop_images=True))]
    try:
        with serve_process(tiny_vlm_dir, "--text-only", "--no-json-schema") as text_only:
            yield {"one_image": started[0].url, "no_schema": started[1].url, "per_message": started[2].url,
                   "drops_images": started[3].url, "text_only": text_only, "model": model.name}
    finally:
        for httpd in started:
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    """Each test starts with no stored probe results."""
    monkeypatch.setenv(caps_module.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def volume():
    return make_volume("mri", shape_kji=(24, 28, 32), name="T1")


@pytest.fixture(scope="module")
def selection(volume):
    return make_selection(volume, top_k=3)  # nine slices


def settings(url, **changes):
    values = dict(server_url=url, max_tokens=24, long_side=LONG_SIDE, retries=0)
    values.update(changes)
    return DescribeSettings(**values)


def _labels_burnt_in(png: bytes, columns: int) -> int:
    """How many tiles of a sheet carry a yellow label in their top-left corner."""
    from PIL import Image

    sheet = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)
    side = sheet.shape[1] // columns
    found = 0
    for row in range(sheet.shape[0] // side):
        for column in range(columns):
            corner = sheet[row * side: row * side + side // 8, column * side: column * side + side // 2]
            yellow = (corner[..., 0] > 200) & (corner[..., 1] > 200) & (corner[..., 2] < 80)
            found += int(yellow.sum() > 10)
    return found


def test_probe_finds_the_image_limit_context_and_schema_and_stores_them(servers):
    client = make_client(settings(servers["one_image"]))
    found = probe(client, servers["model"])
    assert found.images is True and found.max_images == 1 and found.max_images_exact
    assert found.image_limit == 1 and found.json_schema is True and found.context_length == 4096
    assert found.prompt_tokens_per_image > 0
    assert any("2 image(s) refused" in note and "the limit is 1" in note for note in found.notes)
    assert "images: up to 1 per request; context 4096 tokens; JSON schema: yes" in found.summary()
    caps_module.store(found)
    again = cached("openai", servers["one_image"], servers["model"])
    assert again == found and again.age_s() < 60


def test_nine_slices_go_as_one_labelled_sheet_to_a_one_image_server(servers, volume, selection):
    report = describe(volume, selection, settings(servers["one_image"], probe=True))
    sent = report.meta["sent"]
    assert sent["limit"] == 1 and sent["images_per_request"] == 1
    sheet, = sent["attachments"]
    assert sheet["kind"] == "sheet" and sheet["ids"] == ["A1", "A2", "A3", "C1", "C2", "C3", "S1", "S2", "S3"]
    assert sheet["width"] == sheet["height"] == LONG_SIDE
    assert [image["id"] for image in report.meta["images"]] == sheet["ids"]  # the slices stay citable
    assert sent["capabilities"]["max_images"] == 1
    assert "contact sheets" in report.meta["prompt"]["intro"]
    assert "Sent as 1 contact sheet(s) (at most 1 image(s) per request)" in report.to_text()
    assert report.meta["usage"]["prompt_tokens"] > 0 and report.text.strip()
    prompt = build_request(volume, selection, settings(servers["one_image"]),
                           capabilities=cached("openai", servers["one_image"], servers["model"]))
    assert _labels_burnt_in(prompt.attachments[0].png, 3) == 9
    assert "A1: axial" in prompt.attachments[0].label and "S3: sagittal" in prompt.attachments[0].label


def test_a_refusal_naming_images_is_probed_refitted_and_retried(servers, volume, selection):
    report = describe(volume, selection, settings(servers["one_image"]))  # nothing known: nine images first
    sent = report.meta["sent"]
    assert "too many images (9); the limit is 1" in sent["refitted_after"]
    assert sent["images_per_request"] == 1 and report.text.strip()
    assert cached("openai", servers["one_image"], servers["model"]).max_images == 1  # stored for the next run


def test_pack_none_is_refused_before_sending_and_grid_packs_by_plane(servers, volume, selection):
    with pytest.raises(VLMError, match=r"takes 1 image\(s\) per request and the slices are 9 images; use --pack"):
        describe(volume, selection, settings(servers["one_image"], probe=True, pack="none"))
    prompt = build_request(volume, selection, settings("http://127.0.0.1:9", pack="grid"))
    assert [a.meta["ids"] for a in prompt.attachments] == [["A1", "A2", "A3"], ["C1", "C2", "C3"],
                                                           ["S1", "S2", "S3"]]
    assert _labels_burnt_in(prompt.attachments[1].png, 2) == 3


def test_a_text_only_model_is_refused_with_one_line_before_anything_is_sent(servers, volume, selection):
    with pytest.raises(VLMError) as refused:
        describe(volume, selection, settings(servers["text_only"], probe=True))
    message = str(refused.value)
    assert "takes no images (text-only" in message and "nothing was sent" in message and "\n" not in message
    assert refused.value.report.meta["incomplete_reason"] == message and not refused.value.report.text
    found = cached("openai", servers["text_only"], servers["model"])
    assert found.images is False and found.image_limit == 0 and found.json_schema is False
    # The command line says the same in one line.
    run = subprocess.run([sys.executable, "-m", "VoteMILib.cli", "models", "--server", servers["text_only"],
                          "--probe", "--events"], capture_output=True, text=True, timeout=120)
    events = [json.loads(line) for line in run.stdout.splitlines()]
    capabilities, = [e for e in events if e["event"] == "capabilities"]
    assert run.returncode == 0 and capabilities["summary"].startswith("text-only (takes no images)")


def test_a_server_that_drops_the_images_is_found_text_only(servers, volume, selection):
    with pytest.raises(VLMError, match=r"takes no images \(text-only: the prompt did not grow with an image"):
        describe(volume, selection, settings(servers["drops_images"], probe=True))
    assert cached("openai", servers["drops_images"], servers["model"]).max_images == 9  # accepted, yet unseen


def test_no_json_schema_falls_back_to_tags_known_from_the_probe_or_from_the_refusal(servers, volume, selection):
    known = describe(volume, selection, settings(servers["no_schema"], probe=True))
    assert "found by its probe" in known.meta["structured_output"]["note"] and known.findings.source == "tags"
    assert known.meta["sent"]["images_per_request"] == 3  # one sheet per plane fits four images
    caps_module.forget("openai", servers["no_schema"], servers["model"])
    refused = describe(volume, selection, settings(servers["no_schema"], max_images=4))  # nothing probed
    assert "refused structured output" in refused.meta["structured_output"]["note"] and refused.text.strip()


def test_context_sheet_is_sent_first_labelled_and_costs_prompt_tokens(servers, volume, selection):
    plain = describe(volume, selection, settings(servers["no_schema"], probe=True, structured="off"))
    with_context = describe(volume, selection, settings(servers["no_schema"], context=16, structured="off"))
    context, *sheets = with_context.meta["sent"]["attachments"]
    assert context["kind"] == "context" and context["plane"] == "axial" and context["count"] == 16
    assert np.all(np.diff(context["positions_mm"]) > 0) and len(sheets) == 3
    assert with_context.meta["usage"]["prompt_tokens"] > plain.meta["usage"]["prompt_tokens"]
    assert "do not cite it" in with_context.meta["prompt"]["intro"]
    with pytest.raises(VLMError, match="too few for the context sheet and the slices"):
        describe(volume, selection, settings(servers["one_image"], probe=True, context=16))


def _examples(folder, volume_like):
    import SimpleITK as sitk

    for name, kind, seed in (("a_ct", "ct", 5), ("b_mri", "mri", 7)):
        case = folder / name
        case.mkdir(parents=True)
        image = sitk.GetImageFromArray(make_volume(kind, shape_kji=(40, 48, 48), seed=seed).array)
        image.SetSpacing(volume_like.spacing_mm)
        sitk.WriteImage(image, str(case / "scan.nii.gz"))
        (case / "report.txt").write_text(f"Findings: the {kind} example [A1].\nImpression: example.\n")
    return folder


def test_the_closest_worked_example_goes_first_as_an_earlier_turn(servers, volume, selection, tmp_path):
    from VoteMILib.vlm.examples import load_cases, nearest_cases

    folder = _examples(tmp_path / "examples", volume)
    ranked = nearest_cases(volume, load_cases(folder), k=2)
    assert [case.name for case, _, _ in ranked] == ["b_mri", "a_ct"] and ranked[0][2] < ranked[1][2]
    prompt = build_request(volume, selection, settings("http://127.0.0.1:9", examples_dir=str(folder),
                                                       max_images=4))
    turn, = prompt.turns
    assert turn.meta["name"] == "b_mri" and turn.answer.startswith("Findings: the mri example")
    assert prompt.image_count() <= 4 and "Now the examination to report" in prompt.intro
    report = describe(volume, selection, settings(servers["no_schema"], probe=True, examples_dir=str(folder),
                                                  structured="off"))
    assert report.meta["sent"]["examples"][0]["name"] == "b_mri" and report.meta["sent"]["images_per_request"] <= 4
    with pytest.raises(VLMError, match="takes 1 image\\(s\\) per request: too few for 1 example\\(s\\)"):
        build_request(volume, selection, settings("http://127.0.0.1:9", examples_dir=str(folder), max_images=1))
    (folder / "c_broken").mkdir()
    with pytest.raises(VLMError, match=r"example .*c_broken: no readable UTF-8 report.txt"):
        build_request(volume, selection, settings("http://127.0.0.1:9", examples_dir=str(folder)))


def test_in_process_backend_keeps_the_same_limit_and_sheets(tiny_vlm_dir, volume, selection):
    report = describe(volume, selection, DescribeSettings(backend="inprocess", model=str(tiny_vlm_dir), max_tokens=8,
                                                          long_side=LONG_SIDE, max_images=1, device="cpu"))
    sent = report.meta["sent"]
    assert sent["images_per_request"] == 1 and sent["attachments"][0]["kind"] == "sheet"
    assert sent["capabilities"]["protocol"] == "inprocess" and sent["capabilities"]["context_length"] == 4096


def test_one_image_per_message_is_found_and_the_slices_go_over_turns(servers, volume, selection):
    found = probe(make_client(settings(servers["per_message"])), servers["model"])
    assert found.max_images == 1 and found.images_over_turns == 9 and found.turns_limit is None
    assert "images: up to 1 per request; 9 or more one per message" in found.summary()
    caps_module.store(found)
    report = describe(volume, selection, settings(servers["per_message"], pack="turns"))
    sent = report.meta["sent"]
    assert sent["image_turns"] == 9 and sent["images_per_request"] == 9 and report.text.strip()
    assert [a["ids"] for a in sent["attachments"]] == [[image["id"]] for image in report.meta["images"]]
    assert describe(volume, selection, settings(servers["per_message"])).meta["sent"]["images_per_request"] == 1
    with pytest.raises(VLMError, match=r"takes 1 image\(s\) per request even one per message"):
        describe(volume, selection, settings(servers["one_image"], probe=True, pack="turns"))


def test_sheet_grouping_and_unreadable_tiles():
    class Image:
        def __init__(self, plane, n):
            self.plane, self.id = plane, f"{plane[0].upper()}{n}"

    images = [Image(plane, n) for plane in ("axial", "coronal", "sagittal") for n in (1, 2, 3)]
    assert sheet_groups(images, 9) == [[image] for image in images]
    assert [len(group) for group in sheet_groups(images, 3)] == [3, 3, 3]
    assert [len(group) for group in sheet_groups(images, 2)] == [5, 4]
    assert [len(group) for group in sheet_groups(images, 9, always=True)] == [3, 3, 3]
    with pytest.raises(VLMError, match=f"tiles of {LONG_SIDE // 10} px"):
        contact_sheet([(b"", "x")] * 100, LONG_SIDE)
    assert LONG_SIDE // 3 >= MIN_TILE_PX
