"""Servers that answer 200 while the model never sees some images: found by the probe, avoided by describe.

Each server is ``votemi serve`` with the tiny random model, switched to behave like a server people run:
frame merge of adjacent same-size images (llama.cpp, Ollama), only the first image of a message (LM
Studio), a small context filled silently (Ollama's ``num_ctx``). The probe reads the prompt tokens the
server reports; describe then packs the slices so that every one reaches the model, or says why not.
"""

import threading

import pytest

from vlm_fixtures import make_selection, make_volume, serve_process
from VoteMILib.vlm import DescribeSettings, VLMError, describe
from VoteMILib.vlm import capabilities as caps_module
from VoteMILib.vlm.capabilities import cached, probe
from VoteMILib.vlm.pipeline import make_client
from VoteMILib.vlm.server import ServeFeatures, create_server

MAX_TOKENS = 24
# The context of the small-context server: too small for 15 slices one image each by VoteMI's estimate,
# enough for them as contact sheets (the tiny model's images cost 16 tokens each, its text many).
SMALL_CONTEXT = 1350


def _thread_server(model, features):
    httpd = create_server(model, "127.0.0.1", 0, log=None, features=features)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd


@pytest.fixture(scope="module")
def servers(tiny_vlm_dir):
    """URLs of an honest server, one that fuses adjacent same-size images, one that keeps only the first image
    of a message, one with a small context filled silently (in this process, the model loaded once), and
    ``votemi serve --merge-adjacent-images`` as a child process (its command-line switch)."""
    from VoteMILib.vlm.inprocess import load_model

    model = load_model(tiny_vlm_dir, device="cpu")
    switches = {"honest": ServeFeatures(), "fused": ServeFeatures(merge_adjacent_images=True),
                "first_only": ServeFeatures(first_image_only=True),
                "small_context": ServeFeatures(context_tokens=SMALL_CONTEXT)}
    started = {name: _thread_server(model, features) for name, features in switches.items()}
    try:
        with serve_process(tiny_vlm_dir, "--merge-adjacent-images", "--quiet") as merging:
            yield {**{name: httpd.url for name, httpd in started.items()}, "serve_merging": merging,
                   "model": model.name}
    finally:
        for httpd in started.values():
            httpd.shutdown()
            httpd.server_close()


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(caps_module.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def volume():
    return make_volume("mri", shape_kji=(24, 28, 32), name="T1")


@pytest.fixture(scope="module")
def selection(volume):
    return make_selection(volume, top_k=3)  # nine slices, all of one size within a plane


def settings(url, **changes):
    values = dict(server_url=url, max_tokens=MAX_TOKENS, long_side=256, retries=0, structured="off")
    values.update(changes)
    return DescribeSettings(**values)


def _probe(url, model):
    found = probe(make_client(settings(url)), model)
    caps_module.store(found)
    return found


@pytest.mark.parametrize("server, seen", [("honest", "all"), ("fused", "fused"), ("first_only", "first_only"),
                                          ("serve_merging", "fused")])
def test_probe_records_whether_each_image_is_seen_and_its_token_cost(servers, server, seen):
    found = _probe(servers[server], servers["model"])
    assert found.images is True and found.images_seen == seen
    assert found.prompt_tokens_per_image == 16  # the tiny LLaVA: 16 patches per image
    assert found.chars_per_token and found.chars_per_token > 0
    assert f"images seen: {seen.replace('_', ' ')}; 16 tokens per image" in found.summary()
    if seen != "all":
        assert any("two same-size images cost 1.00 times one" in note for note in found.notes)
    again = cached("openai", servers[server], servers["model"])
    assert again.images_seen == seen and again.prompt_tokens_per_image == found.prompt_tokens_per_image


@pytest.mark.parametrize("server, why", [("fused", "the server fuses adjacent same-size images"),
                                         ("first_only", "the model sees only the first image of a message")])
def test_describe_sends_one_image_per_message_where_images_are_lost(servers, volume, selection, server, why):
    report = describe(volume, selection, settings(servers[server], probe=True))
    sent = report.meta["sent"]
    assert sent["images_seen"] == server and sent["image_turns"] == 9 and sent["images_per_request"] == 9
    assert f"Sent as one image per message over 9 turns, because the probe found {why}" in report.to_text()
    # Every slice reached the model: the prompt holds nine images' tokens beyond the honest server's text-only cost.
    honest = describe(volume, selection, settings(servers["honest"], pack="turns", probe=True))
    assert report.meta["usage"]["prompt_tokens"] == honest.meta["usage"]["prompt_tokens"]


def test_a_packing_the_user_chose_is_kept_with_a_warning(servers, volume, selection):
    report = describe(volume, selection, settings(servers["fused"], probe=True, pack="grid"))
    assert report.meta["sent"]["image_turns"] == 0
    assert "warning: the probe found fused images in one message" in report.to_text()


def test_a_request_over_the_small_context_goes_as_sheets_with_a_notice(servers, volume):
    fifteen = make_selection(volume, top_k=5)
    found = _probe(servers["small_context"], servers["model"])
    assert found.context_length == SMALL_CONTEXT
    report = describe(volume, fifteen, settings(servers["small_context"], probe=True))
    plan = report.meta["sent"]["context"]
    assert plan["context_length"] == SMALL_CONTEXT and plan["estimated_tokens"] <= SMALL_CONTEXT
    assert plan["shrunk"].startswith(f"15 images would need about ") and report.meta["sent"]["images_per_request"] < 15
    assert "contact sheet(s)" in report.to_text() and plan["shrunk"] in report.to_text()
    # Nothing was cut: the answer got all its tokens, and the server left out no image to fit.
    usage = report.meta["usage"]
    assert usage["completion_tokens"] == MAX_TOKENS and usage["prompt_tokens"] + MAX_TOKENS <= SMALL_CONTEXT


def test_a_request_that_cannot_fit_is_refused_in_one_line(servers, volume, selection):
    with pytest.raises(VLMError) as caught:
        describe(volume, selection, settings(servers["small_context"], probe=True, max_tokens=SMALL_CONTEXT))
    message = str(caught.value)
    assert "\n" not in message and f"the model's context holds {SMALL_CONTEXT}; nothing was sent" in message
    assert "usage" not in caught.value.report.meta


def test_labels_between_images_survive_frame_merge_and_the_switches_really_lose_images(servers, volume, selection):
    """``--pack none`` keeps the nine slices in one message: the OpenAI dialect's label after each image is text
    between them, so the merging server sees them all; the first-image-only server sees one."""
    tokens = {name: describe(volume, selection, settings(servers[name], pack="none")).meta["usage"]["prompt_tokens"]
              for name in ("honest", "fused", "first_only")}
    assert tokens["fused"] == tokens["honest"]
    assert tokens["honest"] - tokens["first_only"] == 8 * 16  # eight images of 16 tokens never reached the model
