"""Applying a selection: marks, score tables, plot series and chart for one input volume, after the
whole result was checked; and removing them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from ..geometry import PLANES, plane_geometry
from .attributes import (COLUMNS_CENTER, COLUMN_IJK, COLUMN_POSITION, COLUMN_RANK, COLUMN_SCORE, COLUMN_SLICE,
                         OUTCOME_ATTRIBUTE, PLANE_COLORS, SELECTION_MODE_ATTRIBUTE)
from .nodes import _file_into, _subject_hierarchy, _tag, remove_votemi_nodes, votemi_folder
from .report import report_node
from .views import _show_only_in_views_of, jump_to_best_slices
from .volumes import ijk_to_world_matrix


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
