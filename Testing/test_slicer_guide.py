"""The panel's Guide section on real Qt widgets, the real ``.ui``, a real slicer-core segmentation node and point
list, and a real ``votemi select --mask --point --events`` child process (see ``slicer_qt_harness.py``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")

import engine_fixtures as ef  # noqa: E402

CASE = "pyradiomics_brain2"
NORMAL = {"sagittal": 0, "coronal": 1, "axial": 2}  # 256x256x23, a small tumour on 3 axial slices


def _segmentation(headless_slicer, volume_node):
    """A segmentation node made as the Segment Editor or TotalSegmentator leaves one: the case's tumour mask as
    segment 'tumour', and a 'cube' segment elsewhere in the head."""
    import slicer

    scene = headless_slicer.scene
    labelmap = headless_slicer.logics["Volumes"].AddArchetypeVolume(str(ef.cases()[CASE]["mask"]), "mask", 1)
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume_node)
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segmentation.GetSegmentation().GetNthSegment(0).SetName("tumour")
    from vtk.util import numpy_support

    image = labelmap.GetImageData()
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(dims[2], dims[1], dims[0])
    array[...] = 0
    array[8:12, 60:80, 60:80] = 1  # a view of the node's voxels
    image.Modified()
    assert slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(labelmap, segmentation)
    segmentation.GetSegmentation().GetNthSegment(1).SetName("cube")
    scene.RemoveNode(labelmap)
    return segmentation


def _points(headless_slicer, point):
    points = headless_slicer.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "Lesion points")
    points.AddControlPoint(*point, "P1")
    return points


def test_guide_section_selects_the_chosen_segment_and_the_point(panel, headless_slicer):
    """Segments listed checked; unchecking 'cube' leaves 'tumour'; with a point clicked inside the cube (a second
    lesion nobody segmented), Select only runs the child on the exported label map and the point: the best slice
    of each plane holds at least half of the tumour's largest section, its mark inside the tumour; a pick passes
    through the point with its mark on it; the status line and the scene's tables say "guided by"."""
    from VoteMILib import mrml
    from VoteMILib.bench import score_slice, section_areas
    from VoteMILib.datasets import load_mask

    case = ef.cases()[CASE]
    volume = headless_slicer.load_volume(case["image"], CASE)
    segmentation = _segmentation(headless_slicer, volume)
    engine_volume = ef.volume(CASE)
    lesion = load_mask(case["mask"], engine_volume)
    point = tuple(engine_volume.ijk_to_ras[:3, :3] @ np.array([70.0, 70.0, 10.0]) + engine_volume.ijk_to_ras[:3, 3])
    points = _points(headless_slicer, point)
    panel.setup()
    panel.ui.guideCollapsibleButton.collapsed = False
    panel.ui.guideSegmentationSelector.setCurrentNode(segmentation)
    panel.ui.guidePointsSelector.setCurrentNode(points)
    segments = panel.ui.guideSegmentsList
    assert [segments.item(row).text() for row in range(segments.count)] == ["tumour", "cube"]
    assert all(segments.item(row).checkState() == 2 for row in range(segments.count))
    segments.item(1).setCheckState(0)  # Qt.Unchecked
    node = panel.widget._parameterNode
    assert node.guideSegmentation is segmentation and node.guidePoints is points
    cube_id = segmentation.GetSegmentation().GetNthSegmentID(1)
    raw = node.parameterNode
    assert raw.GetAttribute(panel.module.SKIPPED_SEGMENTS_ATTRIBUTE) == cube_id  # saved with the scene
    assert raw.GetNodeReferenceID("guideSegmentation") == segmentation.GetID()  # saved with the scene
    node.slicesPerPlane = 2
    panel.click(panel.ui.selectButton)
    assert panel.ui.statusLabel.text == "Selecting slices guided by the segment 'tumour' and the marked point..."
    panel.run_until(panel.idle, 90)
    assert not panel.slot_errors and panel.dialogs.of("errorDisplay") == []
    assert panel.ui.statusLabel.text.startswith("Done (guided by the segment 'tumour' and the marked point; MRI")
    for plane in ("axial", "coronal", "sagittal"):
        table, = mrml.votemi_nodes(headless_slicer.scene, volume, role="scores", plane=plane)
        assert table.GetAttribute(mrml.SELECTION_MODE_ATTRIBUTE) == "guided by the segment 'tumour' and the marked point"
        marks, = mrml.votemi_nodes(headless_slicer.scene, volume, role="marks", plane=plane)
        assert marks.GetNumberOfControlPoints() == 2
        assert "the segment 'tumour'" in marks.GetNthControlPointDescription(0)
        assert "the marked point" in marks.GetNthControlPointDescription(1)
        rows = [row for row in mrml.table_rows(table) if row["rank"] > 0]
        best = min(rows, key=lambda row: row["rank"])
        areas = section_areas(engine_volume, lesion, plane)
        positions = np.array([row["position_mm"] for row in mrml.table_rows(table)])
        assert score_slice(best["slice"], areas, positions)["hit_half"] == 1.0, plane
        mark = [0.0, 0.0, 0.0]
        marks.GetNthControlPointPosition(1, mark)
        assert mark == pytest.approx(point, abs=1e-3)
        assert abs(rows[[row["rank"] for row in rows].index(2)]["position_mm"] - point[NORMAL[plane]]) < 3.3
        segment_mark = [0.0, 0.0, 0.0]
        marks.GetNthControlPointPosition(0, segment_mark)
        ijk = np.round(np.linalg.solve(engine_volume.ijk_to_ras[:3, :3],
                                       np.subtract(segment_mark, engine_volume.ijk_to_ras[:3, 3]))).astype(int)
        assert lesion[ijk[2], ijk[1], ijk[0]], plane  # the mark at the tumour's centre, not on the cube


def test_guide_refuses_voteMI_marks_and_an_all_unchecked_segmentation(panel, headless_slicer):
    """VoteMI's own marks are no guide, and a segmentation with every segment unchecked guides nothing: each ends
    in a message box, nothing starts."""
    from VoteMILib import mrml

    case = ef.cases()[CASE]
    volume = headless_slicer.load_volume(case["image"], CASE)
    segmentation = _segmentation(headless_slicer, volume)
    marks = _points(headless_slicer, (0.0, 0.0, 0.0))
    marks.SetAttribute(mrml.ROLE_ATTRIBUTE, "marks")
    panel.setup()
    panel.ui.guidePointsSelector.setCurrentNode(marks)
    panel.click(panel.ui.selectButton)
    assert panel.widget._run is None
    assert any("holds VoteMI's marks" in str(args) for args in panel.dialogs.of("errorDisplay")), panel.dialogs.shown
    panel.ui.guidePointsSelector.setCurrentNode(None)
    panel.ui.guideSegmentationSelector.setCurrentNode(segmentation)
    for row in range(panel.ui.guideSegmentsList.count):
        panel.ui.guideSegmentsList.item(row).setCheckState(0)
    panel.click(panel.ui.selectButton)
    assert panel.widget._run is None
    assert any("Check at least one segment" in str(args) for args in panel.dialogs.of("errorDisplay"))


def test_chosen_segments_are_written_on_the_volume_grid(headless_slicer, tmp_path):
    """``mrml.write_segments_file``: segment n of the chosen ones is label n on the input volume's grid, the
    tumour voxel for voxel the case's mask; a segment ID the segmentation does not hold is refused."""
    from VoteMILib import mrml
    from VoteMILib.datasets import load_mask
    from VoteMILib.guided import load_label_map

    case = ef.cases()[CASE]
    volume = headless_slicer.load_volume(case["image"], CASE)
    segmentation = _segmentation(headless_slicer, volume)
    (tumour, _), (cube, _) = mrml.segments_of(segmentation)
    path = tmp_path / "segments.nrrd"
    assert mrml.write_segments_file(segmentation, [cube, tumour], volume, path) == {1: "cube", 2: "tumour"}
    engine_volume = ef.volume(CASE)
    labels = load_label_map(path, engine_volume)
    assert np.array_equal(labels == 2, load_mask(case["mask"], engine_volume))
    assert (labels == 1).sum() == 4 * 20 * 20
    with pytest.raises(ValueError, match="holds no segment nope"):
        mrml.write_segments_file(segmentation, ["nope"], volume, path)
