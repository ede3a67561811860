"""Findings in the scene (real MRML of slicer-core): stored on the report node, kept through save and reload,
and a citation moves the slice views to the cited slice and its mark."""

from __future__ import annotations

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")

from VoteMILib import mrml  # noqa: E402
from VoteMILib.findings import parse_tagged  # noqa: E402


def _report_of(result):
    """A report whose images are the voted slices of ``result`` (as describe records them)."""
    from VoteMILib.vlm import Report

    images = [{"id": s.label, "plane": s.plane, "rank": s.rank, "index": s.index, "position_mm": s.position_mm,
               "center_ras": list(s.center_ras), "sequence_number": 1} for s in result.selected()]
    ids = [image["id"] for image in images]
    text = "Findings:\n- Mass [A1, C1].\n- Oedema [S1, S9].\nImpression: Tumour [A1]."
    return Report(text, {"model": "m", "images": images}, findings=parse_tagged(text, ids))


def _setup(headless_slicer, main_case_selection):
    path, result = main_case_selection
    node = headless_slicer.load_volume(path, "tcga_du_7294")
    headless_slicer.show(node)
    mrml.apply_selection(headless_slicer.scene, node, result)
    report_node = mrml.begin_report(headless_slicer.scene, node)
    mrml.finish_report(report_node, _report_of(result))
    return node, result, report_node


def test_citation_moves_the_cited_view_to_the_slice_and_the_others_through_the_mark(headless_slicer,
                                                                                      main_case_selection):
    scene = headless_slicer.scene
    node, result, _ = _setup(headless_slicer, main_case_selection)
    cited = result.planes["coronal"].selected[0]
    moved = mrml.jump_to_citation(scene, node, "C1")
    assert set(moved) == {"Red", "Green", "Yellow"}
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Green"), cited.center_ras)) < 1e-6
    for view in ("Red", "Yellow", "Green"):
        assert abs(mrml.slice_offset_mm(headless_slicer.slice_node(view), cited.mark_ras)) < 1e-6
    axial = result.planes["axial"].selected[0]
    mrml.jump_to_citation(scene, node, "A1-2")  # another sequence's image: the main volume's slice
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Red"), axial.center_ras)) < 1e-6
    assert mrml.jump_to_citation(scene, node, "S9") == {}


def test_review_survives_scene_save_and_reload(headless_slicer, main_case_selection, tmp_path):
    scene = headless_slicer.scene
    node, result, report_node = _setup(headless_slicer, main_case_selection)
    findings = mrml.report_findings(report_node)
    assert findings.items[1].unknown_cites == ["S9"]
    findings.accept(0, "Dr. A", when="2026-01-01T10:00:00+00:00")
    findings.reject(1, "Dr. A", when="2026-01-01T10:01:00+00:00")
    findings.edit(2, "Glioma [A1]", "Dr. B", when="2026-01-01T10:02:00+00:00")
    mrml.store_findings(report_node, findings)
    assert report_node.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "review").startswith("Reviewed: 2 of 3 accepted")
    mrml_path = headless_slicer.save_bundle(tmp_path / "scene")

    from mrml_helpers import HeadlessSlicer

    restored = HeadlessSlicer()
    try:
        restored.load_scene(mrml_path)
        volume = restored.scene.GetFirstNodeByName("tcga_du_7294")
        loaded = mrml.report_findings(mrml.report_node(restored.scene, volume))
        assert loaded.to_dict() == findings.to_dict()
        assert [f.status for f in loaded.items] == ["accepted", "rejected", "edited"]
        restored.show(volume)
        mrml.jump_to_citation(restored.scene, volume, "S1")
        sagittal = result.planes["sagittal"].selected[0]
        assert abs(mrml.slice_offset_mm(restored.slice_node("Yellow"), sagittal.center_ras)) < 1e-3
    finally:
        restored.close()
    # A new run starts without the old findings.
    mrml.begin_report(scene, node)
    assert mrml.report_findings(report_node) is None


def test_unreadable_findings_attribute_is_ignored(headless_slicer, main_case_selection):
    _, _, report_node = _setup(headless_slicer, main_case_selection)
    report_node.SetAttribute(mrml.FINDINGS_ATTRIBUTE, '{"items": [{"text": "x", "status": "weird"}]}')
    assert mrml.report_findings(report_node) is None
