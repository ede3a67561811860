"""What is sent to a VLM: image order, IDs, sizes, windows, prompt template; and the report object."""

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from vlm_fixtures import make_selection, make_volume, position_pattern
from VoteMILib.vlm import (CT_PRESETS, DEFAULT_TEMPLATE, NOTICE, PLACEHOLDERS, DescribeSettings, Report, VLMError,
                           build_prompt, build_request, choose_windowing, detect_modality, prepare_images)
from VoteMILib.vlm.imaging import THREE_WINDOWS, nearest_slice, preset_window, render_rgb
from VoteMILib.vlm.prompts import PromptImage, format_position, render_template


@pytest.fixture(scope="module")
def mri():
    return make_volume("mri", name="T1")


@pytest.fixture(scope="module")
def ct():
    return make_volume("ct", name="CT head")


def test_modality_detection(mri, ct):
    assert detect_modality(ct) == "CT"
    assert detect_modality(mri) == "MRI"
    # A z-scored MRI has negative values, but not air at -1000 HU.
    zscored = make_volume("mri")
    zscored.array[:] = (zscored.array - zscored.array.mean()) / zscored.array.std()
    assert detect_modality(zscored) == "MRI"
    declared = make_volume("mri")
    declared.metadata["modality"] = "CT"
    assert detect_modality(declared) == "CT"


def test_ct_presets_and_window_choice(mri, ct):
    assert preset_window("brain") == (0.0, 80.0)
    assert preset_window("Soft tissue") == (-160.0, 240.0)
    for name, (level, width) in CT_PRESETS.items():
        low, high = preset_window(name)
        assert high - low == width and (low + high) / 2 == level
    with pytest.raises(ValueError, match="unknown CT preset"):
        preset_window("liver")
    assert choose_windowing(ct, ct_preset="lung").windows == (preset_window("lung"),)
    assert choose_windowing(ct, ct_preset="three_window").windows == THREE_WINDOWS
    # CT without preset, and MRI, use the given window or percentiles.
    assert choose_windowing(ct, ct_preset=None, window=(-50, 150)).source == "display"
    assert choose_windowing(mri, window=(10, 500)).windows == ((10.0, 500.0),)
    assert choose_windowing(mri).source == "percentiles"
    assert choose_windowing(mri, modality="CT", ct_preset="bone").source == "preset:bone"
    with pytest.raises(ValueError, match="high must exceed low"):
        choose_windowing(mri, window=(5, 5))


def test_three_window_rgb_differs_per_channel(ct):
    image = render_rgb(ct, "axial", ct.array.shape[0] // 2, choose_windowing(ct, ct_preset="three_window"), 80)
    pixels = np.asarray(image)
    assert image.mode == "RGB" and max(image.size) == 80
    assert not np.array_equal(pixels[..., 0], pixels[..., 2])  # different windows per channel
    grey = np.asarray(render_rgb(ct, "axial", ct.array.shape[0] // 2, choose_windowing(ct), 80))
    assert np.array_equal(grey[..., 0], grey[..., 1]) and np.array_equal(grey[..., 1], grey[..., 2])


def test_images_in_documented_order_with_ids_and_size(mri):
    selection = make_selection(mri, top_k=3)
    images = prepare_images(mri, selection, DescribeSettings(long_side=100))
    assert [i.id for i in images] == ["A1", "A2", "A3", "C1", "C2", "C3", "S1", "S2", "S3"]
    for image, chosen in zip(images, selection.selected()):
        decoded = Image.open(io.BytesIO(image.png))
        assert decoded.format == "PNG" and decoded.mode == "RGB" and max(decoded.size) == 100
        assert (image.plane, image.position_mm) == (chosen.plane, chosen.position_mm)
        assert image.meta["ijk_index"] == chosen.ijk_index and image.sequence == "T1"
        assert re.search(rf"^{image.id}: {image.plane}, {position_pattern(image.plane, image.position_mm)}",
                         image.label)
    # top_k and planes narrow the selection; order stays plane by plane.
    narrowed = prepare_images(mri, selection, DescribeSettings(long_side=64, top_k=1, planes=("sagittal", "axial")))
    assert [i.id for i in narrowed] == ["A1", "S1"]
    with pytest.raises(VLMError, match="no selected slices"):
        prepare_images(mri, make_selection(mri, planes=("axial",)), DescribeSettings(planes=("coronal",)))


def test_extra_sequences_follow_each_slice_at_the_same_position(mri):
    # A second sequence on a coarser, shifted grid: matched by RAS position, not by index.
    flair = make_volume("mri", shape_kji=(10, 12, 14), spacing=(2.0, 2.4, 4.0), name="FLAIR", seed=1)
    selection = make_selection(mri, top_k=1)
    images = prepare_images(mri, selection, DescribeSettings(long_side=64), extra_volumes=[flair])
    assert [i.id for i in images] == ["A1", "A1-2", "C1", "C1-2", "S1", "S1-2"]
    for first, second in zip(images[::2], images[1::2]):
        assert (first.sequence, second.sequence) == ("T1", "FLAIR")
        assert second.plane == first.plane
        assert abs(second.position_mm - first.position_mm) <= max(flair.spacing_mm)
        assert "sequence FLAIR" in second.label
    # A slice outside the extra volume is skipped for that volume only.
    assert nearest_slice(flair, "axial", 500.0) is None


def test_prompt_template_placeholders_and_language(mri):
    images = prepare_images(mri, make_selection(mri, top_k=1), DescribeSettings(long_side=64))
    prompt = build_prompt(images, language="German", modality="MRI")
    assert "German" in prompt.instruction and "{" not in prompt.instruction
    assert "Findings" in DEFAULT_TEMPLATE and "Impression" in DEFAULT_TEMPLATE
    template = " | ".join("{%s}" % name for name in PLACEHOLDERS) + " {{literal}}"
    filled = build_prompt(images, template=template, language="French", modality="MRI").instruction
    assert "A1, C1, S1" in filled and "French" in filled and "{literal}" in filled and "3 |" in filled
    with pytest.raises(ValueError, match=r"unknown placeholder \{langauge\}"):
        build_prompt(images, template="Write in {langauge}")
    with pytest.raises(VLMError, match="unknown placeholder"):
        build_request(mri, make_selection(mri, top_k=1), DescribeSettings(prompt_template="{nope}", long_side=64))
    assert render_template("{{x}} {a}", {"a": 1}) == "{x} 1"
    assert format_position("coronal", -3.04) == "P 3.0 mm" and format_position("sagittal", 2) == "R 2.0 mm"


def test_flat_prompt_lists_labels_in_image_order():
    images = [PromptImage("A1", "axial", 1.0, "T1", b""), PromptImage("C1", "coronal", -2.0, "T1", b"")]
    text = build_prompt(images).flat_text()
    assert text.index("Image 1: A1: axial, S 1.0 mm") < text.index("Image 2: C1: coronal, P 2.0 mm")


def test_settings_validation_and_public_dict():
    with pytest.raises(VLMError, match="unknown backend"):
        DescribeSettings(backend="grpc").validate()
    with pytest.raises(VLMError, match="model folder"):
        DescribeSettings(backend="inprocess").validate()
    with pytest.raises(VLMError, match="CT preset"):
        DescribeSettings(ct_preset="liver").validate()
    with pytest.raises(VLMError, match="long side"):
        DescribeSettings(long_side=4).validate()
    public = DescribeSettings(api_key="secret").public_dict()
    assert "api_key" not in public and public["api_key_set"] is True
    json.dumps(public)


def test_saved_reports_keep_the_backend_under_the_key_protocol():
    settings = DescribeSettings(backend="ollama")
    # Saved reports keep the backend under the key they always had, in the same place.
    assert list(settings.public_dict())[:2] == ["server_url", "protocol"]
    assert settings.public_dict()["protocol"] == "ollama" and "backend" not in settings.public_dict()
    with pytest.raises(TypeError):
        DescribeSettings(protocol="ollama")  # 0.1's alias is gone


def test_one_list_of_backends():
    from VoteMILib.names import BACKENDS, HTTP_BACKENDS, INPROCESS
    from VoteMILib.vlm.dialects import DIALECTS
    from VoteMILib.vlm.inprocess import InProcessClient

    assert tuple(DIALECTS) == HTTP_BACKENDS and BACKENDS == (*HTTP_BACKENDS, INPROCESS)
    assert InProcessClient.backend == INPROCESS


def test_report_keeps_notice_apart_and_exports(tmp_path):
    meta = {"notice": NOTICE, "model": "m", "server": "http://x", "created": "now",
            "images": [{"id": "A1", "plane": "axial", "position": "S 1.0 mm", "sequence": "T1"}]}
    report = Report("Findings: x [A1].", dict(meta), complete=True)
    assert NOTICE not in report.text
    for fmt in ("text", "markdown", "json"):
        assert NOTICE in report.export(fmt)
    assert "A1: axial, S 1.0 mm, sequence T1" in report.to_text()
    data = json.loads(report.to_json())
    assert data["report"] == report.text and data["report_meta"]["notice"] == NOTICE
    assert Report.from_dict(data).text == report.text
    partial = Report("Findings: x", dict(meta, incomplete_reason="the connection broke off"), complete=False)
    assert "Incomplete report: the connection broke off" in partial.to_text()
    assert "Incomplete report" in partial.to_markdown()
    path = partial.save(tmp_path / "r.md")
    assert open(path, encoding="utf-8").read().startswith(f"> **{NOTICE}**")
    assert json.load(open(partial.save(tmp_path / "r.json")))["report_meta"]["complete"] is False
    with pytest.raises(ValueError):
        report.export("pdf")
