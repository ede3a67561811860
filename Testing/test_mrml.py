"""VoteMI's MRML layer on the real MRML libraries (slicer-core): volumes, marks, tables, plot, report, scenes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")

import VoteMISelfTestLib as mrml_selftest  # noqa: E402
from VoteMILib import mrml  # noqa: E402
from VoteMILib.geometry import NORMAL_INDEX, PLANES, display_slice  # noqa: E402
from VoteMILib.volumes import VolumeError, load_volume  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _load_main_case(app, main_case_selection):
    path, result = main_case_selection
    node = app.load_volume(path, "tcga_du_7294")
    app.show(node)
    return node, result


# ------------------------------------------------------------------------------------------------
# Volumes


def test_volume_from_node_equals_file_reading(headless_slicer, main_case_selection):
    path, _ = main_case_selection
    node = headless_slicer.load_volume(path)
    from_node, from_file = mrml.volume_from_node(node), load_volume(path)
    assert from_node.array.shape == from_file.array.shape == (155, 240, 240)
    assert np.array_equal(from_node.array, from_file.array)
    assert np.allclose(from_node.ijk_to_ras, from_file.ijk_to_ras)
    assert from_node.name == node.GetName()
    # A copy: changing the node's voxels later does not change what a worker thread got.
    assert not np.shares_memory(from_node.array, node.GetImageData().GetPointData().GetScalars())


def test_volume_from_node_includes_linear_transform_and_refuses_bad_inputs(headless_slicer):
    import vtk

    scene = headless_slicer.scene
    phantom = mrml_selftest.blob_phantom(shape_kji=(12, 16, 16), blob_center_kji=(6, 8, 8), blob_radius_mm=4)
    node = mrml.add_volume_from_array(scene, phantom.array, phantom.ijk_to_ras, "phantom")
    transform = scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.5)
    transform.SetMatrixTransformToParent(shift)
    node.SetAndObserveTransformNodeID(transform.GetID())
    volume = mrml.volume_from_node(node)
    assert np.allclose(volume.ijk_to_ras[:3, 3], phantom.ijk_to_ras[:3, 3] + [12.5, 0, 0])

    grid = scene.AddNewNodeByClass("vtkMRMLGridTransformNode", "warp")
    node.SetAndObserveTransformNodeID(grid.GetID())
    with pytest.raises(VolumeError, match="non-linear transform"):
        mrml.volume_from_node(node)
    node.SetAndObserveTransformNodeID(None)

    labels = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    with pytest.raises(VolumeError, match="label map"):
        mrml.volume_from_node(labels)
    with pytest.raises(VolumeError, match="no input volume"):
        mrml.volume_from_node(None)
    empty = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(VolumeError, match="no voxels"):
        mrml.volume_from_node(empty)


def test_display_window_follows_window_level(headless_slicer, main_case_selection):
    node = headless_slicer.load_volume(main_case_selection[0])
    display = node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(400.0, 300.0)
    assert mrml.display_window(node) == pytest.approx((100.0, 500.0))


# ------------------------------------------------------------------------------------------------
# Slice views


def test_default_slice_views_match_engine_display_orientation(headless_slicer):
    """Slicer's Red/Yellow/Green screen axes agree with geometry.display_slice (what the model is shown)."""
    shape = (5, 6, 7)
    r, a, s = np.indices(shape)
    canonical = (100 * r + 10 * a + s).astype(float)  # a voxel's value encodes its (R, A, S) index
    axis_of_step = {100: 0, 10: 1, 1: 2}

    def ras_step(delta):
        vector = np.zeros(3)
        vector[axis_of_step[abs(int(delta))]] = np.sign(delta)
        return vector

    for name, plane in {"Red": "axial", "Yellow": "sagittal", "Green": "coronal"}.items():
        node = headless_slicer.slice_node(name)
        assert mrml.slice_node_plane(node) == plane
        slice_to_ras = mrml.matrix_to_numpy(node.GetSliceToRAS())
        image = display_slice(canonical, plane, 2)
        # One column to the right, and one row up, in the engine's image ...
        right, up = ras_step(image[0, 1] - image[0, 0]), ras_step(image[0, 0] - image[1, 0])
        # ... move along the same RAS directions as Slicer's screen x and y axes.
        assert np.allclose(right, slice_to_ras[:3, 0]), f"{name}: screen right is {slice_to_ras[:3, 0]}, engine {right}"
        assert np.allclose(up, slice_to_ras[:3, 1]), f"{name}: screen up is {slice_to_ras[:3, 1]}, engine {up}"


def test_slice_node_plane_of_oblique_view_is_none(headless_slicer):
    import vtk

    node = headless_slicer.slice_node("Red")
    rotated = vtk.vtkMatrix4x4()
    rotated.DeepCopy(node.GetSliceToRAS())
    angle = np.radians(45)
    for row, values in enumerate(([1, 0, 0], [0, np.cos(angle), -np.sin(angle)], [0, np.sin(angle), np.cos(angle)])):
        for col, value in enumerate(values):
            rotated.SetElement(row, col, value)
    node.GetSliceToRAS().DeepCopy(rotated)
    node.UpdateMatrices()
    assert mrml.slice_node_plane(node) is None


# ------------------------------------------------------------------------------------------------
# Applying a selection


def test_apply_selection_marks_scores_plot_and_views(headless_slicer, main_case_selection):
    scene = headless_slicer.scene
    node, result = _load_main_case(headless_slicer, main_case_selection)
    made = mrml.apply_selection(scene, node, result)
    mrml_selftest.check_scene(scene, node, result)
    assert made.jumped == {"Red": "axial", "Yellow": "sagittal", "Green": "coronal"}
    labels = [made.marks["axial"].GetNthControlPointLabel(i) for i in range(3)]
    assert labels == [f"Axial {s.rank} ({s.score:.2f})" for s in result.planes["axial"].selected]
    for marks in made.marks.values():
        assert marks.GetDisplayNode().GetVisibility() and marks.GetDisplayNode().GetVisibility2D()
        assert marks.GetDisplayNode().GetPointLabelsVisibility()
    # One row per slice: 155 axial, 240 coronal, 240 sagittal.
    assert {plane: table.GetNumberOfRows() for plane, table in made.tables.items()} == {
        "axial": 155, "coronal": 240, "sagittal": 240}
    assert made.series["axial"].GetXColumnName() == mrml.COLUMN_POSITION
    assert made.series["axial"].GetYColumnName() == mrml.COLUMN_SCORE
    # Everything sits in one subject hierarchy folder beside the volume.
    shnode = scene.GetSubjectHierarchyNode()
    for made_node in made.all_nodes():
        assert shnode.GetItemParent(shnode.GetItemByDataNode(made_node)) == made.folder_item
    assert shnode.GetItemAttribute(made.folder_item, mrml.FOLDER_ATTRIBUTE) == node.GetID()
    # The results list the panel shows: best first per plane, at the selected positions.
    picks = mrml.voted_slices(scene, node)
    assert [(p["plane"], p["rank"], p["position_mm"]) for p in picks] == [
        (s.plane, s.rank, pytest.approx(s.position_mm)) for s in result.selected()]


def test_rerun_replaces_votemi_nodes_and_keeps_other_volumes(headless_slicer, main_case_selection):
    scene = headless_slicer.scene
    node, result = _load_main_case(headless_slicer, main_case_selection)
    other = mrml.add_volume_from_array(scene, *_phantom_arrays(), "other")
    from VoteMILib.selection import select_slices

    other_result = select_slices(mrml.volume_from_node(other), planes=("axial",), top_k=1)
    mrml.apply_selection(scene, other, other_result, jump=False)
    stream = mrml.ReportStream(scene, node)
    stream.append("draft")
    report = stream.node
    nodes_before = scene.GetNumberOfNodes()
    for _ in range(3):
        mrml.apply_selection(scene, node, result)
    mrml_selftest.check_scene(scene, node, result)
    assert scene.GetNumberOfNodes() == nodes_before + 13  # 3 x (marks + its display node + table + series) + chart
    assert mrml.votemi_nodes(scene, node, role="report") == [report]
    assert report.GetText() == "draft"
    # The other volume's nodes are untouched, in their own folder.
    assert len(mrml.votemi_nodes(scene, other)) == 4
    assert mrml.votemi_folder(scene, other, create=False) != mrml.votemi_folder(scene, node, create=False)
    shnode = scene.GetSubjectHierarchyNode()
    folders = [item for item in _all_items(shnode) if shnode.HasItemAttribute(item, mrml.FOLDER_ATTRIBUTE)]
    assert len(folders) == 2


def _phantom_arrays():
    phantom = mrml_selftest.blob_phantom()
    return phantom.array, phantom.ijk_to_ras


def _all_items(shnode):
    import vtk

    ids = vtk.vtkIdList()
    shnode.GetItemChildren(shnode.GetSceneItemID(), ids, True)
    return [ids.GetId(i) for i in range(ids.GetNumberOfIds())]


def test_jump_to_slice_moves_only_views_of_that_plane(headless_slicer, main_case_selection):
    scene = headless_slicer.scene
    node, result = _load_main_case(headless_slicer, main_case_selection)
    mrml.apply_selection(scene, node, result)
    second = result.planes["coronal"].selected[1]
    red_before = mrml.matrix_to_numpy(headless_slicer.slice_node("Red").GetSliceToRAS())
    assert mrml.jump_to_slice(scene, "coronal", second.center_ras) == ["Green"]
    assert abs(mrml.slice_offset_mm(headless_slicer.slice_node("Green"), second.center_ras)) < 1e-6
    assert np.allclose(mrml.matrix_to_numpy(headless_slicer.slice_node("Red").GetSliceToRAS()), red_before)


# ------------------------------------------------------------------------------------------------
# Report


def test_report_streams_and_detects_user_edits(headless_slicer, main_case_selection):
    from VoteMILib.vlm import Report

    scene = headless_slicer.scene
    node, _ = _load_main_case(headless_slicer, main_case_selection)
    assert mrml.report_node(scene, node) is None
    stream = mrml.ReportStream(scene, node)
    for piece in ("Findings: ", "a lesion", "."):
        stream.append(piece)
        assert not mrml.report_edited(stream.node)
    report = stream.node
    assert report.GetText() == "Findings: a lesion."
    meta = {"model": "medgemma", "server": "http://127.0.0.1:11434", "created": "2026-01-01T00:00:00+00:00",
            "notice": "AI-generated draft", "images": [{"id": "A1"}, {"id": "C1"}]}
    mrml.finish_report(report, Report("Findings: a lesion.\nImpression: \"focal\" <mass>; a=b:c", meta))
    assert not mrml.report_edited(report)
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "images") == "A1, C1"
    assert mrml.report_metadata(report)["model"] == "medgemma"
    report.SetText(report.GetText() + "\nReviewed by Dr. X")
    assert mrml.report_edited(report)
    # A new run starts from an empty, unedited report in the same node.
    assert mrml.begin_report(scene, node) is report
    assert report.GetText() == "" and not mrml.report_edited(report)
    assert report.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "model") is None


def test_describe_loopback_streams_into_report_node(headless_slicer):
    """The VoteMITest routine: blob phantom, Select, then Describe against a loopback server."""
    from VoteMILib.selection import select_slices
    from VoteMILib.vlm import DescribeSettings, describe

    scene = headless_slicer.scene
    phantom = mrml_selftest.blob_phantom()
    node = mrml.add_volume_from_array(scene, phantom.array, phantom.ijk_to_ras, "VoteMIBlob")
    headless_slicer.show(node)
    volume = mrml.volume_from_node(node)
    result = select_slices(volume, top_k=2)
    mrml_selftest.check_axial_pick_through_blob(result, phantom)
    mrml.apply_selection(scene, node, result)
    mrml_selftest.check_scene(scene, node, result)

    stream = mrml.ReportStream(scene, node)
    streamed = []

    def on_text(piece):
        streamed.append(piece)
        stream.append(piece)

    with mrml_selftest.LoopbackServer() as server:
        settings = DescribeSettings(server_url=server.url, backend="openai", model=server.model,
                                    window=mrml.display_window(node), timeout_s=30.0, retries=0)
        report = describe(volume, result, settings, on_text=on_text)
        assert server.images_received() == 6
    assert len(streamed) > 3, "the answer did not stream in pieces"
    stream.finish(report)
    mrml_selftest.check_report_node(stream.node, report, streamed)


def test_selection_stops_within_a_second_of_cancel(main_case_selection):
    """The worker thread ends soon after Cancel (the panel itself lets go of it at once)."""
    from VoteMILib.selection import Cancelled, select_slices

    volume = load_volume(main_case_selection[0])
    stop = threading.Event()
    outcome = {}

    def progress(fraction, message):
        # Cancel once the work is under way (selection is fast enough to end before a fixed sleep).
        if fraction >= 0.2 and not stop.is_set():
            outcome["asked"] = time.monotonic()
            stop.set()

    def work():
        try:
            select_slices(volume, progress=progress, cancel=stop.is_set)
            outcome["result"] = "finished"
        except Cancelled:
            outcome["result"] = "cancelled"
        outcome["ended"] = time.monotonic()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert outcome.get("result") == "cancelled"
    assert outcome["ended"] - outcome["asked"] < 1.0


# ------------------------------------------------------------------------------------------------
# Scene save and load


def test_saved_scene_restores_votemi_nodes(headless_slicer, main_case_selection, tmp_path):
    from VoteMILib.vlm import Report

    scene = headless_slicer.scene
    node, result = _load_main_case(headless_slicer, main_case_selection)
    mrml.apply_selection(scene, node, result)
    report = mrml.begin_report(scene, node)
    mrml.finish_report(report, Report("Findings: lesion in the right frontal lobe.\n" * 20, {"model": "m"}))
    report.SetText(report.GetText() + "Reviewed.")
    mrml_path = headless_slicer.save_bundle(tmp_path / "scene")

    from mrml_helpers import HeadlessSlicer

    restored = HeadlessSlicer()
    try:
        restored.load_scene(mrml_path)
        volume = restored.scene.GetFirstNodeByName("tcga_du_7294")
        assert volume is not None and volume.GetImageData() is not None
        mrml_selftest.check_scene(restored.scene, volume, result, tolerance_mm=1e-3)
        loaded_report = mrml.report_node(restored.scene, volume)
        assert loaded_report.GetText() == report.GetText()
        assert mrml.report_edited(loaded_report), "the user's edit is still recognised after reloading"
        assert mrml.report_metadata(loaded_report) == {"model": "m"}
        before, after = mrml.voted_slices(scene, node), mrml.voted_slices(restored.scene, volume)
        def keys(picks):
            return [(pick["plane"], pick["rank"], pick["slice"]) for pick in picks]

        assert keys(after) == keys(before)
        assert np.allclose([p["center_ras"] for p in after], [p["center_ras"] for p in before])
        folder = mrml.votemi_folder(restored.scene, volume, create=False)
        shnode = restored.scene.GetSubjectHierarchyNode()
        assert folder and all(shnode.GetItemParent(shnode.GetItemByDataNode(n)) == folder
                              for n in mrml.votemi_nodes(restored.scene, volume))
        # A run after loading replaces the restored nodes instead of adding a second set.
        mrml.apply_selection(restored.scene, volume, result)
        mrml_selftest.check_scene(restored.scene, volume, result)
    finally:
        restored.close()


# ------------------------------------------------------------------------------------------------
# Offscreen rendering


def _colour_pixels(pixels, colour, tolerance=40):
    target = np.array(colour) * 255
    return int(np.count_nonzero(np.abs(pixels.astype(int) - target).max(axis=2) < tolerance))


def test_offscreen_views_show_image_and_marks(headless_slicer, main_case_selection, tmp_path):
    scene = headless_slicer.scene
    node, result = _load_main_case(headless_slicer, main_case_selection)
    views = headless_slicer.render_views()  # before VoteMI: no marks
    baseline = {name: _colour_pixels(pixels, mrml.PLANE_COLORS[plane]) for (name, pixels), plane
                in zip(views.items(), ("axial", "sagittal", "coronal"), strict=True)}
    mrml.apply_selection(scene, node, result)
    views = headless_slicer.render_views()
    assert headless_slicer.window_class() in ("vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow",
                                              "vtkXOpenGLRenderWindow")
    for (name, pixels), plane in zip(views.items(), ("axial", "sagittal", "coronal"), strict=True):
        height, width, _ = pixels.shape
        centre = pixels[height // 4: 3 * height // 4, width // 4: 3 * width // 4]
        assert centre.mean() > 40, f"{name}: the brain is not visible (mean {centre.mean():.1f})"
        marked = _colour_pixels(pixels, mrml.PLANE_COLORS[plane])
        assert marked > baseline[name] + 150, f"{name}: the {plane} mark is not visible ({marked} pixels)"
    from mrml_helpers import views_with_bars

    captions = {}
    for name, plane in (("Red", "axial"), ("Yellow", "sagittal"), ("Green", "coronal")):
        best = result.planes[plane].selected[0]
        axis = "RAS"[NORMAL_INDEX[plane]]
        captions[name] = f"{name[0]}: {plane.capitalize()} 1, {axis} {best.position_mm:+.1f} mm"
    screenshot = views_with_bars(views, captions)  # Screenshot01.png: see test_slicer_widget.py
    screenshot.save(tmp_path / "views.png")


def test_every_plane_has_a_colour():
    assert set(mrml.PLANE_COLORS) == set(PLANES)
