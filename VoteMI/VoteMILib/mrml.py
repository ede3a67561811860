"""MRML layer of the VoteMI Slicer module: volumes in, marks, scores and reports out. No Qt.

Everything here works on a ``vtkMRMLScene`` and its nodes only, so it runs inside the Slicer
application and, for testing, on the MRML libraries of the ``slicer-core`` wheel. ``slicer`` and
``vtk`` are imported inside the functions; importing this module needs neither.

Nodes VoteMI adds for an input volume (all carry the attribute :data:`ROLE_ATTRIBUTE` and a
:data:`SOURCE_REFERENCE` node reference to the volume, and sit in one subject hierarchy folder):

* one markups fiducial node per plane, a control point at the centre of every voted slice,
  labelled like ``"Axial 1 (0.82)"``, coloured like the slice view that shows that plane;
* one table node per plane with every slice's position, score, IJK index, rank and centre;
* one plot series per plane (score versus RAS position) and a plot chart holding them;
* a text node with the report drafted by the vision-language model and its metadata as attributes.

Running again for the same volume replaces the marks, tables, series and chart (after
:func:`validate_selection` accepted the whole new result) and reuses the report node, which
:class:`ReportStream` fills as a report streams in. :func:`report_edited` tells whether the user
changed the report since VoteMI wrote it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from .geometry import PLANES, plane_geometry
from .volumes import Volume, VolumeError, volume_from_array

#: Node attribute naming what a VoteMI node is ("marks", "scores", "series", "chart", "report").
ROLE_ATTRIBUTE = "VoteMI.Role"
#: Node attribute with the plane of a per-plane node.
PLANE_ATTRIBUTE = "VoteMI.Plane"
#: Node reference role from every VoteMI node to its input volume.
SOURCE_REFERENCE = "VoteMISource"
#: Subject hierarchy item attribute marking VoteMI's folder (value: the input volume's node ID).
FOLDER_ATTRIBUTE = "VoteMI.Folder"
#: Report node attribute: SHA-1 of the text VoteMI last wrote (compared to detect user edits).
WRITTEN_DIGEST_ATTRIBUTE = "VoteMI.WrittenSHA1"
#: Report node attribute holding the report metadata as JSON.
REPORT_META_ATTRIBUTE = "VoteMI.ReportMeta"
#: Score table and marks attribute: how the slices were chosen ("findings", "guided by the segment 'x'", ...).
SELECTION_MODE_ATTRIBUTE = "VoteMI.SelectionMode"
#: On a score table: its plane's cue, whether anything stood out and the confidence (PlaneResult.outcome, JSON).
OUTCOME_ATTRIBUTE = "VoteMI.Outcome"
#: Prefix of the one-value report attributes (model, server, created, complete, ...).
REPORT_ATTRIBUTE_PREFIX = "VoteMI.Report."
#: Attribute of the report node holding its findings and their review as JSON (see :mod:`VoteMILib.findings`).
FINDINGS_ATTRIBUTE = "VoteMI.Findings"

ROLES = ("marks", "scores", "series", "chart", "report")
#: Slice view colours of Slicer's default layout: Red shows axial, Green coronal, Yellow sagittal.
PLANE_COLORS = {
    "axial": (0.953, 0.290, 0.200),
    "coronal": (0.431, 0.690, 0.294),
    "sagittal": (0.929, 0.835, 0.298),
}

# Table column names (also the plot series' X and Y columns).
COLUMN_SLICE = "Slice"
COLUMN_IJK = "IJK index"
COLUMN_POSITION = "Position (mm)"
COLUMN_SCORE = "Score"
COLUMN_RANK = "Rank"
COLUMNS_CENTER = ("R", "A", "S")


@dataclass
class SceneNodes:
    """The nodes :func:`apply_selection` made for one input volume."""

    folder_item: int
    marks: dict = field(default_factory=dict)
    tables: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)
    chart: object = None
    report: object = None
    jumped: dict = field(default_factory=dict)

    def all_nodes(self) -> list:
        nodes = [*self.marks.values(), *self.tables.values(), *self.series.values()]
        return nodes + [node for node in (self.chart, self.report) if node is not None]


# --------------------------------------------------------------------------------------------
# Volumes


def matrix_to_numpy(vtk_matrix) -> np.ndarray:
    """A ``vtkMatrix4x4`` as a 4x4 numpy array."""
    return np.array([[vtk_matrix.GetElement(row, col) for col in range(4)] for row in range(4)], dtype=float)


def ijk_to_world_matrix(volume_node) -> np.ndarray:
    """IJK-to-RAS matrix of a volume node including a linear parent transform.

    Raises
    ------
    VolumeError
        When the volume is under a non-linear transform (harden it first).
    """
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume_node.GetIJKToRASMatrix(matrix)
    ijk_to_ras = matrix_to_numpy(matrix)
    transform = volume_node.GetParentTransformNode()
    if transform is not None:
        if not transform.IsTransformToWorldLinear():
            raise VolumeError(f"{volume_node.GetName()} is under a non-linear transform; "
                              "harden the transform (Data module) before running VoteMI")
        to_world = vtk.vtkMatrix4x4()
        transform.GetMatrixTransformToWorld(to_world)
        ijk_to_ras = matrix_to_numpy(to_world) @ ijk_to_ras
    return ijk_to_ras


def _node_voxels(volume_node):
    """The voxel array (K, J, I; a view, not a copy) and IJK-to-world matrix of a scalar volume node.

    Raises
    ------
    VolumeError
        With a one-line reason: no volume, a label map, no voxels, several components, or a
        non-linear transform.
    """
    from vtk.util import numpy_support

    if volume_node is None:
        raise VolumeError("no input volume selected")
    name = volume_node.GetName() or "volume"
    if not volume_node.IsA("vtkMRMLScalarVolumeNode"):
        raise VolumeError(f"{name} is a {volume_node.GetClassName()}, not a scalar volume")
    if volume_node.IsA("vtkMRMLLabelMapVolumeNode"):
        raise VolumeError(f"{name} is a label map; choose an image volume")
    image = volume_node.GetImageData()
    scalars = image.GetPointData().GetScalars() if image is not None else None
    if scalars is None:
        raise VolumeError(f"{name} has no voxels loaded")
    if scalars.GetNumberOfComponents() != 1:
        raise VolumeError(f"{name} has {scalars.GetNumberOfComponents()} components per voxel; "
                          "VoteMI needs a scalar volume")
    dims = image.GetDimensions()
    array = numpy_support.vtk_to_numpy(scalars).reshape(dims[2], dims[1], dims[0])
    return array, ijk_to_world_matrix(volume_node)


def volume_from_node(volume_node) -> Volume:
    """Copy a scalar volume node's voxels and geometry into a :class:`~VoteMILib.volumes.Volume`.

    The voxels are copied (K, J, I order, as ``slicer.util.arrayFromVolume``), so the result stays
    valid while the user keeps working with the node. The IJK-to-RAS matrix includes a linear
    parent transform, so positions match what the slice views show.

    Raises
    ------
    VolumeError
        With a one-line reason (see :func:`_node_voxels`), or anything
        :func:`~VoteMILib.volumes.volume_from_array` refuses.
    """
    array, ijk_to_ras = _node_voxels(volume_node)
    return volume_from_array(np.array(array, copy=True), ijk_to_ras, name=volume_node.GetName() or "volume")


def write_volume_file(volume_node, path) -> str:
    """Write a scalar volume node's voxels and geometry (with its linear transform) to an image file.

    This is how the panel hands a volume to a ``votemi`` child process: the file holds exactly the
    node's voxels in their own type and its IJK-to-RAS matrix, and the node is left untouched (no
    storage node is added or changed). Returns the path.

    Raises
    ------
    VolumeError
        As :func:`_node_voxels`.
    OSError
        Naming the file, when it cannot be written.
    """
    array, ijk_to_ras = _node_voxels(volume_node)
    return _write_array_file(array, ijk_to_ras, path)


def _write_array_file(array_kji, ijk_to_ras, path) -> str:
    """Write a (K, J, I) array with an IJK-to-RAS matrix as an image file (ITK's LPS geometry)."""
    import SimpleITK as sitk

    from .outputs import OutputError

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    spacing = np.linalg.norm(ijk_to_ras[:3, :3], axis=0)
    lps = np.diag([-1.0, -1.0, 1.0])
    image.SetSpacing([float(x) for x in spacing])
    image.SetDirection([float(x) for x in (lps @ ijk_to_ras[:3, :3] / spacing).ravel()])
    image.SetOrigin([float(x) for x in lps @ ijk_to_ras[:3, 3]])
    path = str(path)
    try:
        sitk.WriteImage(image, path)
    except RuntimeError as error:
        lines = str(error).strip().splitlines()
        raise OutputError(f"cannot write {path}: {lines[-1] if lines else 'unknown reason'}") from None
    return path


# --------------------------------------------------------------------------------------------
# Guides: a segmentation's segments and a point list the user gives


def segments_of(segmentation_node) -> list:
    """(segment ID, name) of every segment of a segmentation node, in its order."""
    if segmentation_node is None:
        return []
    segmentation = segmentation_node.GetSegmentation()
    return [(segmentation.GetNthSegmentID(index), segmentation.GetNthSegment(index).GetName() or f"segment {index + 1}")
            for index in range(segmentation.GetNumberOfSegments())]


def write_segments_file(segmentation_node, segment_ids, reference_volume_node, path) -> dict:
    """Write chosen segments as one label map file on the reference volume's grid; return {label: segment name}.

    Segment n of ``segment_ids`` becomes label n (1 first). Where segments overlap (a tumour inside its organ),
    the smaller one is written last, so that it stays visible. The file has the reference volume's geometry with
    its linear transform, as :func:`write_volume_file` writes the volume itself.

    Raises
    ------
    ValueError
        With a one-line reason: no segmentation, no segment chosen, a segment ID it does not hold, a segment
        that is empty on the volume's grid.
    """
    import slicer
    import vtk
    from vtk.util import numpy_support

    if segmentation_node is None:
        raise ValueError("no segmentation chosen to guide the selection")
    known = dict(segments_of(segmentation_node))
    segment_ids = [segment_id for segment_id in segment_ids if segment_id]
    if not segment_ids:
        raise ValueError(f"no segment of {segmentation_node.GetName()} is chosen to guide the selection")
    missing = [segment_id for segment_id in segment_ids if segment_id not in known]
    if missing:
        raise ValueError(f"{segmentation_node.GetName()} holds no segment {', '.join(missing)}")
    scene = segmentation_node.GetScene()
    masks = {}
    for segment_id in segment_ids:
        labelmap = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "VoteMI guide export")
        try:
            ids = vtk.vtkStringArray()
            ids.InsertNextValue(segment_id)
            # The reference volume's whole grid, not the segment's bounding box (the default extent).
            if not slicer.vtkSlicerSegmentationsModuleLogic.ExportSegmentsToLabelmapNode(
                    segmentation_node, ids, labelmap, reference_volume_node,
                    slicer.vtkSegmentation.EXTENT_REFERENCE_GEOMETRY):
                raise ValueError(f"the segment '{known[segment_id]}' of {segmentation_node.GetName()} could not be "
                                 f"put onto the grid of {reference_volume_node.GetName()}")
            dims = labelmap.GetImageData().GetDimensions()
            if tuple(dims) != tuple(reference_volume_node.GetImageData().GetDimensions()):
                raise ValueError(f"the segment '{known[segment_id]}' was exported on a {dims} grid, not on the "
                                 f"grid of {reference_volume_node.GetName()}")
            voxels = numpy_support.vtk_to_numpy(labelmap.GetImageData().GetPointData().GetScalars())
            masks[segment_id] = voxels.reshape(dims[2], dims[1], dims[0]) > 0
        finally:
            _remove_node(scene, labelmap)
        if not masks[segment_id].any():
            raise ValueError(f"the segment '{known[segment_id]}' of {segmentation_node.GetName()} is empty on the "
                             f"grid of {reference_volume_node.GetName()}")
    labels = np.zeros(next(iter(masks.values())).shape, dtype=np.uint16)
    for segment_id in sorted(segment_ids, key=lambda segment_id: -int(masks[segment_id].sum())):
        labels[masks[segment_id]] = segment_ids.index(segment_id) + 1
    _write_array_file(labels, ijk_to_world_matrix(reference_volume_node), path)
    return {number: known[segment_id] for number, segment_id in enumerate(segment_ids, start=1)}


def guide_points(markups_node) -> list:
    """RAS (world) positions of the control points of a point list, in its order.

    Raises
    ------
    ValueError
        When the list holds VoteMI's own marks or no point.
    """
    if markups_node is None:
        return []
    if markups_node.GetAttribute(ROLE_ATTRIBUTE):
        raise ValueError(f"{markups_node.GetName()} holds VoteMI's marks; choose a point list you placed")
    points = []
    for index in range(markups_node.GetNumberOfControlPoints()):
        position = [0.0, 0.0, 0.0]
        markups_node.GetNthControlPointPositionWorld(index, position)
        points.append(tuple(float(c) for c in position))
    if not points:
        raise ValueError(f"{markups_node.GetName()} holds no point; place one on each lesion")
    return points


def guide_description(segment_names=(), points: int = 0) -> str:
    """The guided structures in words, as :meth:`VoteMILib.guided.Guide.describe` says them."""
    from .guided import CUE_POINT, CUE_SEGMENTATION, Guide, Structure

    structures = [Structure(CUE_SEGMENTATION, number, name) for number, name in enumerate(segment_names, start=1)]
    structures += [Structure(CUE_POINT, number, f"point {number}", ras=(0.0, 0.0, 0.0))
                   for number in range(1, points + 1)]
    return Guide(structures=structures).describe()


def display_window(volume_node):
    """(low, high) intensity window the slice views show for a volume, or None if it has none."""
    display = volume_node.GetDisplayNode() if volume_node is not None else None
    if display is None or not hasattr(display, "GetWindow"):
        return None
    window, level = float(display.GetWindow()), float(display.GetLevel())
    if not np.isfinite(window) or window <= 0:
        return None
    return (level - window / 2.0, level + window / 2.0)


def add_volume_from_array(scene, array_kji, ijk_to_ras, name: str = "Volume"):
    """Add a scalar volume node with display node to ``scene`` (``slicer.util.addVolumeFromArray``
    for scenes other than ``slicer.mrmlScene``)."""
    import vtk
    from vtk.util import numpy_support

    array = np.ascontiguousarray(array_kji)
    image = vtk.vtkImageData()
    image.SetDimensions(array.shape[2], array.shape[1], array.shape[0])
    scalars = numpy_support.numpy_to_vtk(array.ravel(), deep=True)
    image.GetPointData().SetScalars(scalars)
    node = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", name)
    matrix = vtk.vtkMatrix4x4()
    for row in range(4):
        for col in range(4):
            matrix.SetElement(row, col, float(ijk_to_ras[row][col]))
    node.SetIJKToRASMatrix(matrix)
    node.SetAndObserveImageData(image)
    node.CreateDefaultDisplayNodes()
    display = node.GetDisplayNode()
    if display is not None:
        display.AutoWindowLevelOn()
    return node


# --------------------------------------------------------------------------------------------
# Finding and removing VoteMI's nodes


def _iter_nodes(scene):
    for index in range(scene.GetNumberOfNodes()):
        node = scene.GetNthNode(index)
        if node is not None:
            yield node


def votemi_nodes(scene, volume_node, role: str | None = None, plane: str | None = None) -> list:
    """VoteMI's nodes made for ``volume_node`` (optionally of one role and plane), in scene order."""
    found = []
    for node in _iter_nodes(scene):
        node_role = node.GetAttribute(ROLE_ATTRIBUTE)
        if not node_role or (role is not None and node_role != role):
            continue
        if plane is not None and node.GetAttribute(PLANE_ATTRIBUTE) != plane:
            continue
        if node.GetNodeReference(SOURCE_REFERENCE) is volume_node:
            found.append(node)
    return found


def remove_votemi_nodes(scene, volume_node, keep_report: bool = True) -> int:
    """Remove VoteMI's nodes of ``volume_node`` (with their display and storage nodes); return how many."""
    doomed = [node for node in votemi_nodes(scene, volume_node)
              if not (keep_report and node.GetAttribute(ROLE_ATTRIBUTE) == "report")]
    for node in doomed:
        _remove_node(scene, node)
    return len(doomed)


def _remove_node(scene, node):
    helpers = []
    for getter, counter in (("GetNthDisplayNode", "GetNumberOfDisplayNodes"),
                            ("GetNthStorageNode", "GetNumberOfStorageNodes")):
        if hasattr(node, counter):
            helpers += [getattr(node, getter)(i) for i in range(getattr(node, counter)())]
    scene.RemoveNode(node)
    for helper in helpers:
        if helper is not None and helper.GetScene() is scene:
            scene.RemoveNode(helper)


def _subject_hierarchy(scene):
    import slicer

    shnode = scene.GetSubjectHierarchyNode() if hasattr(scene, "GetSubjectHierarchyNode") else None
    if shnode is None:
        shnode = slicer.vtkMRMLSubjectHierarchyNode.ResolveSubjectHierarchy(scene)
    return shnode


def _item_of(shnode, node, parent=None):
    item = shnode.GetItemByDataNode(node)
    if not item:
        item = shnode.CreateItem(parent if parent is not None else shnode.GetSceneItemID(), node)
    return item


def votemi_folder(scene, volume_node, create: bool = True) -> int:
    """Subject hierarchy folder of VoteMI's nodes for ``volume_node`` (0 if none and not ``create``).

    The folder sits beside the volume (under its study or patient when it has one).
    """
    shnode = _subject_hierarchy(scene)
    for node in votemi_nodes(scene, volume_node):
        item = shnode.GetItemByDataNode(node)
        parent = shnode.GetItemParent(item) if item else 0
        if parent and shnode.HasItemAttribute(parent, FOLDER_ATTRIBUTE):
            return parent
    volume_item = _item_of(shnode, volume_node)
    parent = shnode.GetItemParent(volume_item) or shnode.GetSceneItemID()
    import vtk

    ids = vtk.vtkIdList()
    shnode.GetItemChildren(parent, ids)
    for index in range(ids.GetNumberOfIds()):
        child = ids.GetId(index)
        if shnode.GetItemAttribute(child, FOLDER_ATTRIBUTE) == volume_node.GetID():
            return child
    if not create:
        return 0
    folder = shnode.CreateFolderItem(parent, f"VoteMI {volume_node.GetName()}")
    shnode.SetItemAttribute(folder, FOLDER_ATTRIBUTE, volume_node.GetID())
    return folder


def _tag(node, volume_node, role, plane=None):
    node.SetAttribute(ROLE_ATTRIBUTE, role)
    if plane is not None:
        node.SetAttribute(PLANE_ATTRIBUTE, plane)
    node.SetNodeReferenceID(SOURCE_REFERENCE, volume_node.GetID())


def _file_into(scene, node, folder):
    shnode = _subject_hierarchy(scene)
    item = _item_of(shnode, node, folder)
    if shnode.GetItemParent(item) != folder:
        shnode.SetItemParent(item, folder)


# --------------------------------------------------------------------------------------------
# Applying a selection


def mark_label(selected) -> str:
    """Control point label of a voted slice, e.g. ``"Axial 1 (0.82)"``."""
    return f"{selected.plane.capitalize()} {selected.rank} ({selected.score:.2f})"


def apply_selection(scene, volume_node, result, jump: bool = True, show_volume: bool = True) -> SceneNodes:
    """Put a :class:`~VoteMILib.results.SelectionResult` into the scene.

    Replaces VoteMI's previous marks, tables, series and chart of ``volume_node`` (the report node
    is kept), files everything into the volume's VoteMI folder and, if ``jump``, moves every slice
    view to the best slice of the plane it shows.

    Parameters
    ----------
    scene : vtkMRMLScene
    volume_node : vtkMRMLScalarVolumeNode
        The volume the selection was made on.
    result : SelectionResult
    jump : bool
        Jump the slice views (see :func:`jump_to_best_slices`).
    show_volume : bool
        Show ``volume_node`` as background of slice views that show neither it nor anything else.

    Returns
    -------
    SceneNodes
    """
    import vtk

    geometries = validate_selection(volume_node, result)
    remove_votemi_nodes(scene, volume_node, keep_report=True)
    folder = votemi_folder(scene, volume_node)
    volume_name = volume_node.GetName()
    made = SceneNodes(folder_item=folder)

    for plane, plane_result in result.planes.items():
        color = PLANE_COLORS[plane]
        geometry = geometries[plane]
        ranks = np.zeros(geometry.count, dtype=int)
        for chosen in plane_result.selected:
            ranks[chosen.index] = chosen.rank

        table = scene.AddNewNodeByClass("vtkMRMLTableNode", f"VoteMI {plane} scores ({volume_name})")
        columns = [
            (vtk.vtkIntArray, COLUMN_SLICE, np.arange(geometry.count)),
            (vtk.vtkIntArray, COLUMN_IJK, geometry.ijk_indices),
            (vtk.vtkDoubleArray, COLUMN_POSITION, np.asarray(plane_result.positions_mm, dtype=float)),
            (vtk.vtkDoubleArray, COLUMN_SCORE, np.asarray(plane_result.scores, dtype=float)),
            (vtk.vtkIntArray, COLUMN_RANK, ranks),
        ] + [(vtk.vtkDoubleArray, name, geometry.centers_ras[:, axis]) for axis, name in enumerate(COLUMNS_CENTER)]
        for array_type, name, values in columns:
            column = array_type()
            column.SetName(name)
            column.SetNumberOfValues(len(values))
            for row, value in enumerate(values):
                column.SetValue(row, value.item() if hasattr(value, "item") else value)
            table.AddColumn(column)
        table.SetAttribute("VoteMI.Settings", json.dumps(result.settings, sort_keys=True))
        table.SetAttribute(SELECTION_MODE_ATTRIBUTE, result.selection_mode())
        table.SetAttribute(OUTCOME_ATTRIBUTE, json.dumps(plane_result.outcome(), sort_keys=True))
        _tag(table, volume_node, "scores", plane)
        made.tables[plane] = table

        series = scene.AddNewNodeByClass("vtkMRMLPlotSeriesNode", f"{plane.capitalize()}")
        series.SetAndObserveTableNodeID(table.GetID())
        series.SetXColumnName(COLUMN_POSITION)
        series.SetYColumnName(COLUMN_SCORE)
        series.SetPlotType(series.PlotTypeScatter)
        series.SetMarkerStyle(series.MarkerStyleNone)
        series.SetLineStyle(series.LineStyleSolid)
        series.SetColor(*color)
        _tag(series, volume_node, "series", plane)
        made.series[plane] = series

        marks = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", f"VoteMI {plane} ({volume_name})")
        marks.CreateDefaultDisplayNodes()
        for chosen in plane_result.selected:
            index = marks.AddControlPoint(*[float(c) for c in chosen.mark_ras], mark_label(chosen))
            shows = f", {chosen.guide['phrase']}" if chosen.guide and chosen.guide.get("phrase") else ""
            marks.SetNthControlPointDescription(
                index, f"{plane} slice {chosen.index} (IJK {chosen.ijk_index}), {chosen.position_mm:+.1f} mm, "
                       f"score {chosen.score:.3f}{shows}")
            marks.SetNthControlPointLocked(index, True)
        marks.SetLocked(True)
        marks.SetAttribute(SELECTION_MODE_ATTRIBUTE, result.selection_mode())
        display = marks.GetDisplayNode()
        _show_only_in_views_of(scene, display, plane)
        display.SetSelectedColor(*color)
        display.SetColor(*color)
        display.SetActiveColor(*color)
        display.SetPointLabelsVisibility(True)
        display.SetPropertiesLabelVisibility(False)
        display.SetGlyphScale(2.5)
        display.SetTextScale(3.5)
        display.SetVisibility(True)
        _tag(marks, volume_node, "marks", plane)
        made.marks[plane] = marks

    chart = scene.AddNewNodeByClass("vtkMRMLPlotChartNode", f"VoteMI slice scores ({volume_name})")
    chart.SetTitle(f"VoteMI slice scores: {volume_name}")
    chart.SetXAxisTitle("Slice position along the plane normal, RAS (mm)")
    chart.SetYAxisTitle("Score")
    chart.SetLegendVisibility(True)
    for series in made.series.values():
        chart.AddAndObservePlotSeriesNodeID(series.GetID())
    _tag(chart, volume_node, "chart")
    made.chart = chart

    for node in made.all_nodes():
        _file_into(scene, node, folder)
    report = report_node(scene, volume_node, create=False)
    if report is not None:
        _file_into(scene, report, folder)
        made.report = report
    if show_volume:
        show_volume_in_slice_views(scene, volume_node)
    if jump:
        made.jumped = jump_to_best_slices(scene, result)
    return made


def _finite(values, count=None) -> bool:
    array = np.asarray(values, dtype=float)
    return bool(np.isfinite(array).all()) and (count is None or array.shape == (count,))


def validate_selection(volume_node, result) -> dict:
    """Check a whole selection against the volume it is to be shown on, before anything is changed.

    Returns {plane: PlaneGeometry} of ``volume_node``.

    Raises
    ------
    ValueError
        With a one-line reason: unknown plane, sizes or slice counts that do not match the volume,
        slice indices out of range or repeated, positions that are not the volume's, or scores,
        positions or points that are not finite numbers.
    """
    name = volume_node.GetName()
    dims = volume_node.GetImageData().GetDimensions() if volume_node.GetImageData() is not None else None
    if dims is None or tuple(int(n) for n in result.size_ijk) != tuple(dims):
        raise ValueError(f"the selection was made on a {'x'.join(map(str, result.size_ijk))} volume but {name} is "
                         f"{'x'.join(map(str, dims)) if dims else 'empty'}; was it made on another volume?")
    if not result.planes:
        raise ValueError("the selection holds no planes")
    ijk_to_ras = ijk_to_world_matrix(volume_node)
    geometries = {}
    for plane, plane_result in result.planes.items():
        if plane not in PLANES:
            raise ValueError(f"the selection has an unknown plane '{plane}'")
        geometry = plane_geometry(ijk_to_ras, result.size_ijk, plane)
        count = geometry.count
        if not (_finite(plane_result.scores, count) and _finite(plane_result.positions_mm, count)):
            raise ValueError(f"the selection's {plane} scores or positions are not {count} finite numbers "
                             f"(one per slice of {name})")
        if np.abs(np.asarray(plane_result.positions_mm, dtype=float) - geometry.positions_mm).max() > 0.01:
            raise ValueError(f"the selection's {plane} slice positions are not those of {name}; "
                             "was it made on another volume or before the volume moved?")
        indices = [chosen.index for chosen in plane_result.selected]
        if len(set(indices)) != len(indices) or any(not 0 <= int(i) < count for i in indices):
            raise ValueError(f"the selection's {plane} picks {indices} are not distinct slices of 0..{count - 1}")
        for chosen in plane_result.selected:
            points = [chosen.center_ras] + ([chosen.focus_ras] if chosen.focus_ras is not None else [])
            if not (all(_finite(point, 3) for point in points) and _finite([chosen.score, chosen.position_mm])
                    and int(chosen.rank) >= 1):
                raise ValueError(f"the selection's {plane} pick {chosen.label} has a missing or non-finite value")
        geometries[plane] = geometry
    return geometries


def clear_results(scene, volume_node) -> int:
    """Remove every node VoteMI made for ``volume_node`` (the report too) and its folder; return how many.

    The folder stays if something else was put into it.
    """
    import vtk

    folder = votemi_folder(scene, volume_node, create=False)
    removed = remove_votemi_nodes(scene, volume_node, keep_report=False)
    if folder:
        shnode = _subject_hierarchy(scene)
        children = vtk.vtkIdList()
        shnode.GetItemChildren(folder, children)
        for child in [children.GetId(index) for index in range(children.GetNumberOfIds())]:
            if shnode.GetItemDataNode(child) is None and not shnode.GetNumberOfItemChildren(child):
                shnode.RemoveItem(child, False, False)  # left behind by a removed node
        if shnode.GetNumberOfItemChildren(folder) == 0:
            shnode.RemoveItem(folder, False, False)
    return removed


def show_volume_in_slice_views(scene, volume_node) -> None:
    """Make ``volume_node`` the background of slice views that show no volume at all."""
    composites = scene.GetNodesByClass("vtkMRMLSliceCompositeNode")
    for index in range(composites.GetNumberOfItems()):
        composite = composites.GetItemAsObject(index)
        if not composite.GetBackgroundVolumeID() and not composite.GetForegroundVolumeID():
            composite.SetBackgroundVolumeID(volume_node.GetID())


# --------------------------------------------------------------------------------------------
# Slice views


def slice_node_plane(slice_node) -> str | None:
    """Anatomical plane a slice view shows, from its slice normal; None for oblique reformats.

    Works for any layout: Red/Yellow/Green with Slicer's default orientations, or views the user
    set to another orientation.
    """
    normal = np.array([slice_node.GetSliceToRAS().GetElement(row, 2) for row in range(3)])
    normal /= max(float(np.linalg.norm(normal)), 1e-12)
    axis = int(np.argmax(np.abs(normal)))
    if abs(normal[axis]) < np.cos(np.radians(30)):
        return None
    return {0: "sagittal", 1: "coronal", 2: "axial"}[axis]


def _show_only_in_views_of(scene, display_node, plane: str) -> None:
    """Show a plane's marks in the slice views of that plane (and in 3D views) only: a mark placed
    on the finding may lie near a slice of another plane, where its label would cover that
    plane's own mark. Views are left unrestricted when none shows the plane."""
    views = [node for node in slice_nodes(scene) if slice_node_plane(node) == plane]
    if not views:
        return
    three_d = scene.GetNodesByClass("vtkMRMLViewNode")
    views += [three_d.GetItemAsObject(index) for index in range(three_d.GetNumberOfItems())]
    display_node.RemoveAllViewNodeIDs()
    for view in views:
        display_node.AddViewNodeID(view.GetID())


def slice_nodes(scene) -> list:
    nodes = scene.GetNodesByClass("vtkMRMLSliceNode")
    return [nodes.GetItemAsObject(index) for index in range(nodes.GetNumberOfItems())]


def jump_to_slice(scene, plane: str, center_ras) -> list:
    """Move every slice view that shows ``plane`` so that it passes through ``center_ras``.

    Only the slice offset changes; the views keep their zoom and pan. Returns the names of the
    views moved.
    """
    moved = []
    for node in slice_nodes(scene):
        if slice_node_plane(node) == plane:
            node.JumpSliceByOffsetting(*[float(c) for c in center_ras])
            moved.append(node.GetName())
    return moved


def jump_to_best_slices(scene, result) -> dict:
    """Jump each slice view to the best voted slice of the plane it shows; return {view name: plane}."""
    jumped = {}
    for node in slice_nodes(scene):
        plane = slice_node_plane(node)
        plane_result = result.planes.get(plane) if plane else None
        if plane_result is None or not plane_result.selected:
            continue
        node.JumpSliceByOffsetting(*[float(c) for c in plane_result.selected[0].center_ras])
        jumped[node.GetName()] = plane
    return jumped


def slice_offset_mm(slice_node, point_ras) -> float:
    """Signed distance (mm) of a RAS point from a slice view's plane."""
    slice_to_ras = matrix_to_numpy(slice_node.GetSliceToRAS())
    normal = slice_to_ras[:3, 2] / np.linalg.norm(slice_to_ras[:3, 2])
    return float(np.dot(np.asarray(point_ras, dtype=float) - slice_to_ras[:3, 3], normal))


# --------------------------------------------------------------------------------------------
# Reading results back (also after a scene was saved and loaded)


def table_rows(table) -> list:
    """Rows of a VoteMI score table as dicts (slice, ijk_index, position_mm, score, rank, center_ras)."""
    data = table.GetTable()

    def column(name):
        array = data.GetColumnByName(name)
        if array is None:
            raise ValueError(f"{table.GetName()} has no column '{name}'")
        return [array.GetValue(row) for row in range(data.GetNumberOfRows())]

    slices, ijk, positions, scores, ranks = (column(name) for name in
                                             (COLUMN_SLICE, COLUMN_IJK, COLUMN_POSITION, COLUMN_SCORE, COLUMN_RANK))
    centers = list(zip(*(column(name) for name in COLUMNS_CENTER), strict=True))
    return [{"slice": int(slices[row]), "ijk_index": int(ijk[row]), "position_mm": float(positions[row]),
             "score": float(scores[row]), "rank": int(ranks[row]), "center_ras": tuple(float(c) for c in centers[row])}
            for row in range(len(slices))]


def series_point(series_node, row: int):
    """``(plane, slice centre RAS)`` of point ``row`` of a VoteMI score series, or None (not a VoteMI series, no such
    row)."""
    if series_node.GetAttribute(ROLE_ATTRIBUTE) != "series":
        return None
    table = series_node.GetTableNode()
    rows = table_rows(table) if table is not None else []
    if not 0 <= row < len(rows):
        return None
    return series_node.GetAttribute(PLANE_ATTRIBUTE), rows[row]["center_ras"]


def voted_slices(scene, volume_node) -> list:
    """Voted slices of ``volume_node`` as stored in the scene, plane by plane, best first.

    Each item is a dict with ``plane``, the keys of :func:`table_rows` and ``outcome``: the plane's
    :meth:`~VoteMILib.results.PlaneResult.outcome` (None in a scene saved before it was recorded).
    """
    picks = []
    for plane in PLANES:
        for table in votemi_nodes(scene, volume_node, role="scores", plane=plane):
            stored = table.GetAttribute(OUTCOME_ATTRIBUTE)
            outcome = json.loads(stored) if stored else None
            rows = [dict(row, plane=plane, outcome=outcome) for row in table_rows(table) if row["rank"] > 0]
            picks += sorted(rows, key=lambda row: row["rank"])
    return picks


# --------------------------------------------------------------------------------------------
# Report


def _digest(text: str) -> str:
    return hashlib.sha1((text or "").encode("utf-8")).hexdigest()


def report_node(scene, volume_node, create: bool = False):
    """The report text node of ``volume_node`` (created, in VoteMI's folder, if ``create``)."""
    found = votemi_nodes(scene, volume_node, role="report")
    if found or not create:
        return found[0] if found else None
    node = scene.AddNewNodeByClass("vtkMRMLTextNode", f"VoteMI report ({volume_node.GetName()})")
    _tag(node, volume_node, "report")
    _write_text(node, "")
    _file_into(scene, node, votemi_folder(scene, volume_node))
    return node


def report_edited(node) -> bool:
    """True if the report's text is not what VoteMI last wrote (the user edited it).

    An empty report never counts as edited.
    """
    if node is None or not (node.GetText() or "").strip():
        return False
    return node.GetAttribute(WRITTEN_DIGEST_ATTRIBUTE) != _digest(node.GetText())


def _write_text(node, text: str) -> None:
    was = node.StartModify()
    node.SetText(text)
    node.SetAttribute(WRITTEN_DIGEST_ATTRIBUTE, _digest(text))
    node.EndModify(was)


def begin_report(scene, volume_node):
    """Empty the report node of ``volume_node`` (creating it) for a new run; return it.

    Callers ask the user first if :func:`report_edited` is True.
    """
    node = report_node(scene, volume_node, create=True)
    was = node.StartModify()
    for name in list(node.GetAttributeNames() or ()):
        if name.startswith(REPORT_ATTRIBUTE_PREFIX) or name in (REPORT_META_ATTRIBUTE, FINDINGS_ATTRIBUTE):
            node.RemoveAttribute(name)
    node.SetAttribute(REPORT_ATTRIBUTE_PREFIX + "complete", "false")
    _write_text(node, "")
    node.EndModify(was)
    return node


class ReportStream:
    """Writes a report into a volume's report node as it streams in, losing nothing the user had.

    The earlier report (text and metadata) stays until the first piece of text arrives; a run that
    fails before that leaves it untouched. Text changed in the node while the report streams (by a
    script, another widget) is kept: pieces are appended to whatever the node holds, and
    :meth:`finish` then keeps the node's text and stores only the metadata, so the report counts as
    edited by the user.
    """

    def __init__(self, scene, volume_node):
        self.scene = scene
        self.volume_node = volume_node
        self.node = None
        self.written = ""

    @property
    def started(self) -> bool:
        return self.node is not None

    def _begin(self):
        if self.node is None:
            self.node = begin_report(self.scene, self.volume_node)
        return self.node

    def append(self, chunk: str) -> None:
        if not chunk:
            return
        node = self._begin()
        self.written += chunk
        was = node.StartModify()
        node.SetText((node.GetText() or "") + chunk)
        node.SetAttribute(WRITTEN_DIGEST_ATTRIBUTE, _digest(self.written))
        node.EndModify(was)

    def edited(self) -> bool:
        """True if the node's text is no longer what this stream wrote."""
        return self.node is not None and (self.node.GetText() or "") != self.written

    def finish(self, report) -> None:
        """Store the finished (or cancelled, broken-off) report; text edited meanwhile is kept."""
        if self.edited():
            kept = self.node.GetText() or ""
            finish_report(self.node, report)
            was = self.node.StartModify()
            self.node.SetText(kept)
            self.node.SetAttribute(WRITTEN_DIGEST_ATTRIBUTE, _digest(report.text))
            self.node.EndModify(was)
        else:
            finish_report(self._begin(), report)

    def cancel(self, reason: str = "cancelled by the user") -> None:
        """Mark a started report incomplete; a report that had not started is left as it was."""
        if self.node is None:
            return
        self.node.SetAttribute(REPORT_ATTRIBUTE_PREFIX + "complete", "false")
        self.node.SetAttribute(REPORT_ATTRIBUTE_PREFIX + "incomplete_reason", reason)


def finish_report(node, report) -> None:
    """Store a finished (or cancelled / broken-off) :class:`~VoteMILib.vlm.Report` in the node.

    The node's text becomes ``report.text``; the metadata goes into attributes: the full metadata
    as JSON in :data:`REPORT_META_ATTRIBUTE`, and ``model``, ``server``, ``protocol``, ``created``,
    ``complete``, ``incomplete_reason``, ``images`` and ``notice`` as separate attributes.
    """
    meta = dict(report.meta or {})
    was = node.StartModify()
    _write_text(node, report.text)
    images = ", ".join(str(image.get("id", "")) for image in meta.get("images", []) if isinstance(image, dict))
    values = {
        "model": meta.get("model", ""), "server": meta.get("server", ""), "protocol": meta.get("protocol", ""),
        "created": meta.get("created", ""), "complete": "true" if report.complete else "false",
        "incomplete_reason": "" if report.complete else meta.get("incomplete_reason", ""),
        "images": images, "notice": meta.get("notice", ""),
    }
    for key, value in values.items():
        node.SetAttribute(REPORT_ATTRIBUTE_PREFIX + key, str(value))
    node.SetAttribute(REPORT_META_ATTRIBUTE, json.dumps(meta, default=str, separators=(",", ":")))
    if getattr(report, "findings", None) is not None:
        store_findings(node, report.findings)
    node.EndModify(was)


def store_findings(node, findings) -> None:
    """Save a report's findings and their review in its node (kept with the scene)."""
    was = node.StartModify()
    node.SetAttribute(FINDINGS_ATTRIBUTE, json.dumps(findings.to_dict(), separators=(",", ":")))
    node.SetAttribute(REPORT_ATTRIBUTE_PREFIX + "review", findings.summary_line() if findings.items else "")
    node.EndModify(was)


def report_findings(node):
    """The :class:`~VoteMILib.findings.Findings` stored in a report node, or None (none, or unreadable)."""
    from .findings import Findings

    text = node.GetAttribute(FINDINGS_ATTRIBUTE) if node is not None else None
    if not text:
        return None
    try:
        return Findings.from_dict(json.loads(text))
    except (ValueError, TypeError):
        return None


def citation_target(scene, volume_node, image_id: str):
    """``(plane, slice centre RAS, mark RAS)`` of a cited image, or None if the report has no such image.

    The mark is the voted slice's control point (where the slice looks most abnormal); an image of
    another sequence (``A1-2``) leads to the slice of the main volume it was cut at (``A1``).
    """
    node = report_node(scene, volume_node)
    base = image_id.split("-")[0]
    image = next((i for i in report_metadata(node).get("images", []) if i.get("id") == base), None)
    if image is None or "center_ras" not in image:
        return None
    plane, centre = image["plane"], [float(c) for c in image["center_ras"]]
    mark = centre
    for marks in votemi_nodes(scene, volume_node, role="marks", plane=plane):
        rank = int(image.get("rank", 0))
        if 0 < rank <= marks.GetNumberOfControlPoints():
            mark = list(marks.GetNthControlPointPositionWorld(rank - 1))
    return plane, centre, mark


def jump_to_citation(scene, volume_node, image_id: str) -> dict:
    """Show a cited slice: the views of its plane move to it, the other views through its mark.

    The mark lies on the cited slice, so offsetting every view to it does both. Returns
    {view name: plane shown}, empty if the image is unknown.
    """
    target = citation_target(scene, volume_node, image_id)
    if target is None:
        return {}
    moved = {}
    for node in slice_nodes(scene):
        node.JumpSliceByOffsetting(*target[2])
        moved[node.GetName()] = slice_node_plane(node)
    return moved


def report_attribute(node, key: str) -> str:
    """One of the attributes :func:`finish_report` writes (``model``, ``created``, ``complete``, ...), or ""."""
    return (node.GetAttribute(REPORT_ATTRIBUTE_PREFIX + key) or "") if node is not None else ""


@dataclass(frozen=True)
class ReportStatus:
    """Where a report node's text came from, for a one-line summary.

    Attributes
    ----------
    model, created : str
        The model that drafted it and when ("" if VoteMI never wrote it).
    complete : bool
        False for a report broken off (cancelled, timed out, the model stopped).
    incomplete_reason : str
    edited : bool
        The user changed the text since VoteMI wrote it (:func:`report_edited`).
    has_text : bool
    """

    model: str
    created: str
    complete: bool
    incomplete_reason: str
    edited: bool
    has_text: bool


def report_status(node) -> ReportStatus:
    """The :class:`ReportStatus` of a report node (an empty one for None)."""
    return ReportStatus(model=report_attribute(node, "model"), created=report_attribute(node, "created"),
                        complete=report_attribute(node, "complete") != "false",
                        incomplete_reason=report_attribute(node, "incomplete_reason"), edited=report_edited(node),
                        has_text=bool(report_text(node).strip()))


def report_text(node) -> str:
    """The report's text as the user sees it ("" for None)."""
    return (node.GetText() or "") if node is not None else ""


def edit_report_text(node, text: str) -> None:
    """Store text the user typed; the report counts as edited (:func:`report_edited`) from then on."""
    if (node.GetText() or "") != text:
        node.SetText(text)


def report_from_node(node):
    """The report node as a :class:`~VoteMILib.vlm.Report`: the text as the user left it, the metadata (with
    ``edited_by_user`` when the user changed the text), completeness and the findings with their review."""
    from .vlm.report import Report

    meta = report_metadata(node)
    complete = report_attribute(node, "complete") != "false"
    if not complete:
        meta.setdefault("incomplete_reason", report_attribute(node, "incomplete_reason"))
    if report_edited(node):
        meta["edited_by_user"] = True
    return Report(node.GetText() or "", meta, complete=complete, findings=report_findings(node))


def report_metadata(node) -> dict:
    """The metadata :func:`finish_report` stored ({} if none)."""
    text = node.GetAttribute(REPORT_META_ATTRIBUTE) if node is not None else None
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return {}
