"""Nothing the user had is lost: whole-result validation before any node is removed, report streaming that
keeps the previous report and edits made meanwhile, volumes handed to child processes, clearing results.

All on real MRML (slicer-core).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")

import VoteMISelfTestLib as mrml_selftest  # noqa: E402
from VoteMILib import mrml  # noqa: E402
from VoteMILib.results import SelectionResult  # noqa: E402
from VoteMILib.selection import select_slices  # noqa: E402
from VoteMILib.vlm import Report  # noqa: E402
from VoteMILib.volumes import VolumeError, load_volume  # noqa: E402


@pytest.fixture
def blob(headless_slicer):
    phantom = mrml_selftest.blob_phantom()
    node = mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, "Blob")
    result = select_slices(mrml.volume_from_node(node), top_k=2)
    return node, result


def _replace_plane(result, plane, **changes):
    planes = dict(result.planes)
    planes[plane] = dataclasses.replace(result.planes[plane], **changes)
    return dataclasses.replace(result, planes=planes)


def _bad_results(result, other_result):
    axial = result.planes["axial"]
    first = axial.selected[0]
    nan_scores = np.array(axial.scores, dtype=float)
    nan_scores[3] = np.nan
    return {
        "another volume's selection": other_result,
        "a NaN score": _replace_plane(result, "axial", scores=nan_scores),
        "a score missing": _replace_plane(result, "axial", scores=np.asarray(axial.scores)[:-1]),
        "a pick out of range": _replace_plane(result, "axial", selected=[dataclasses.replace(first, index=10_000)]),
        "a repeated pick": _replace_plane(result, "axial", selected=[first, dataclasses.replace(first, rank=2)]),
        "a non-finite point": _replace_plane(result, "axial", selected=[
            dataclasses.replace(first, center_ras=(0.0, float("inf"), 0.0))]),
        "shifted positions": _replace_plane(result, "axial", positions_mm=np.asarray(axial.positions_mm) + 5.0),
        "an unknown plane": dataclasses.replace(result, planes={**result.planes, "oblique": axial}),
        "no planes": dataclasses.replace(result, planes={}),
    }


def test_apply_selection_validates_everything_before_removing_earlier_nodes(headless_slicer, blob):
    scene = headless_slicer.scene
    node, result = blob
    mrml.apply_selection(scene, node, result)
    earlier = [n.GetID() for n in mrml.votemi_nodes(scene, node)]
    small = mrml_selftest.blob_phantom(shape_kji=(30, 48, 48), blob_center_kji=(20, 28, 17), blob_radius_mm=6)
    other = select_slices(mrml.volume_from_node(
        mrml.add_volume_from_array(scene, small.array, small.ijk_to_ras, "Small")), top_k=1)
    for what, bad in _bad_results(result, other).items():
        with pytest.raises(ValueError) as raised:
            mrml.apply_selection(scene, node, bad)
        assert "\n" not in str(raised.value), what
        assert [n.GetID() for n in mrml.votemi_nodes(scene, node)] == earlier, f"{what} removed earlier nodes"
    assert "another volume" in str(pytest.raises(ValueError, mrml.apply_selection, scene, node, other).value)


def test_selection_survives_its_json_form(headless_slicer, blob):
    node, result = blob
    document = result.to_dict(image="blob")
    document["planes"]["axial"]["selected"][0]["anatomy"] = {"label": "left temporal"}  # unknown: ignored
    rebuilt = SelectionResult.from_dict(document)
    assert [(s.label, s.index, s.ijk_index) for s in rebuilt.selected()] == \
        [(s.label, s.index, s.ijk_index) for s in result.selected()]
    assert rebuilt.region == result.region and rebuilt.region.get("name")
    assert {p: r.cue for p, r in rebuilt.planes.items()} == {p: r.cue for p, r in result.planes.items()}
    assert rebuilt.to_dict(image="blob") == document | {"planes": result.to_dict(image="blob")["planes"]}
    made = mrml.apply_selection(headless_slicer.scene, node, rebuilt)
    assert set(made.marks) == {"axial", "coronal", "sagittal"}
    with pytest.raises(ValueError, match="not a VoteMI selection"):
        SelectionResult.from_dict({"planes": {"axial": {"scores": []}}})


# --------------------------------------------------------------------------------------------
# Report streaming


def _earlier_report(scene, node):
    report = mrml.report_node(scene, node, create=True)
    mrml.finish_report(report, Report("Earlier findings.", {"model": "earlier", "created": "2025-01-01"}))
    return report


def _attribute(report, key):
    return report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + key)


def test_the_previous_report_stays_until_the_first_token(headless_slicer, blob):
    scene, (node, _) = headless_slicer.scene, blob
    report = _earlier_report(scene, node)
    stream = mrml.ReportStream(scene, node)
    assert not stream.started and report.GetText() == "Earlier findings."
    stream.cancel()  # a describe that failed or was cancelled before any text
    assert report.GetText() == "Earlier findings." and _attribute(report, "model") == "earlier"
    assert _attribute(report, "complete") == "true"
    stream.append("New ")
    assert stream.node is report and report.GetText() == "New " and _attribute(report, "model") is None
    assert _attribute(report, "complete") == "false"
    stream.append("text.")
    stream.finish(Report("New text.", {"model": "new"}))
    assert report.GetText() == "New text." and _attribute(report, "model") == "new"
    assert not mrml.report_edited(report)


def test_edits_made_while_streaming_are_kept(headless_slicer, blob):
    scene, (node, _) = headless_slicer.scene, blob
    stream = mrml.ReportStream(scene, node)
    stream.append("Findings: ")
    stream.node.SetText(stream.node.GetText() + "(see prior) ")  # another widget or a script
    stream.append("mass.")
    assert stream.node.GetText() == "Findings: (see prior) mass." and stream.edited()
    stream.finish(Report("Findings: mass.", {"model": "m"}))
    assert stream.node.GetText() == "Findings: (see prior) mass."
    assert mrml.report_edited(stream.node) and _attribute(stream.node, "model") == "m"
    assert mrml.report_metadata(stream.node)["model"] == "m"


def test_a_cancelled_stream_keeps_its_text_and_says_so(headless_slicer, blob):
    scene, (node, _) = headless_slicer.scene, blob
    stream = mrml.ReportStream(scene, node)
    stream.append("Partial")
    stream.cancel()
    assert stream.node.GetText() == "Partial"
    assert _attribute(stream.node, "complete") == "false"
    assert _attribute(stream.node, "incomplete_reason") == "cancelled by the user"


def test_an_answer_that_was_not_streamed_replaces_the_report_when_it_arrives(headless_slicer, blob):
    scene, (node, _) = headless_slicer.scene, blob
    report = _earlier_report(scene, node)
    stream = mrml.ReportStream(scene, node)
    stream.finish(Report("Whole answer.", {"model": "m"}))
    assert report.GetText() == "Whole answer." and not mrml.report_edited(report)


# --------------------------------------------------------------------------------------------
# Volumes for child processes, clearing


def test_a_volume_written_for_the_child_reads_back_as_the_node(headless_slicer, tmp_path):
    import vtk

    scene = headless_slicer.scene
    phantom = mrml_selftest.blob_phantom(shape_kji=(20, 24, 28))
    array = phantom.array.astype(np.int16)
    node = mrml.add_volume_from_array(scene, array, phantom.ijk_to_ras, "T1 / post")
    rotation = vtk.vtkMatrix4x4()
    rotation.SetElement(0, 0, 0.0), rotation.SetElement(0, 1, -1.0), rotation.SetElement(1, 0, 1.0)
    rotation.SetElement(1, 1, 0.0), rotation.SetElement(2, 3, 7.5)
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    transform.SetMatrixTransformToParent(rotation)
    node.SetAndObserveTransformNodeID(transform.GetID())
    path = mrml.write_volume_file(node, tmp_path / "volume-0.nrrd")
    written, expected = load_volume(path), mrml.volume_from_node(node)
    assert written.name == "volume-0"
    assert np.array_equal(written.array, expected.array)
    assert np.allclose(written.ijk_to_ras, expected.ijk_to_ras, atol=1e-6)
    assert node.GetStorageNode() is None  # the node itself is left as it was
    label = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "Mask")
    with pytest.raises(VolumeError, match="label map"):
        mrml.write_volume_file(label, tmp_path / "mask.nrrd")


def test_clear_results_keeps_a_folder_the_user_put_something_into(headless_slicer, blob):
    scene, (node, result) = headless_slicer.scene, blob
    mrml.apply_selection(scene, node, result)
    mrml.report_node(scene, node, create=True)
    folder = mrml.votemi_folder(scene, node, create=False)
    shnode = scene.GetSubjectHierarchyNode()
    mine = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", "My ruler")
    item = shnode.GetItemByDataNode(mine) or shnode.CreateItem(folder, mine)
    shnode.SetItemParent(item, folder)
    removed = mrml.clear_results(scene, node)
    assert removed == 3 * 3 + 2 and mrml.votemi_nodes(scene, node) == []
    assert scene.GetNodeByID(mine.GetID()) is mine and shnode.GetItemParent(shnode.GetItemByDataNode(mine)) == folder
