"""A selection in the scene: its marks, score tables and plot (through :mod:`VoteMILib.mrml`), the plot in the
layout, and the slice views jumping to a voted slice, a clicked plot point or a cited image."""

from __future__ import annotations

import slicer


def applySelection(volumeNode, result, jump=True, switchLayout=True):
    """Marks, score tables, plot and view jumps for a selection (replacing VoteMI's earlier ones).

    The score plot goes into the layout's plot views; if ``switchLayout`` and the layout has
    none, Slicer switches to a layout with one. Otherwise the user's layout is kept.
    """
    from VoteMILib import mrml

    nodes = mrml.apply_selection(slicer.mrmlScene, volumeNode, result, jump=jump)
    if switchLayout and hasattr(slicer.modules, "plots") and slicer.app.layoutManager() is not None:
        slicer.modules.plots.logic().ShowChartInLayout(nodes.chart)
        # Showing the chart may switch the layout; the views of the new layout jump too.
        mrml.jump_to_best_slices(slicer.mrmlScene, result)
    else:
        plotViews = slicer.mrmlScene.GetNodesByClass("vtkMRMLPlotViewNode")
        for index in range(plotViews.GetNumberOfItems()):
            plotViews.GetItemAsObject(index).SetPlotChartNodeID(nodes.chart.GetID())
    return nodes


def jumpToSlice(plane, centerRAS):
    """Move the views of ``plane`` to the slice through ``centerRAS``; the views moved (none: all views are
    centred on the point)."""
    from VoteMILib import mrml

    moved = mrml.jump_to_slice(slicer.mrmlScene, plane, centerRAS)
    if not moved:
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *centerRAS, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
    return moved


def jumpToSeriesPoint(seriesNode, row):
    """Jump to the slice of a clicked point of a VoteMI score series; False if not a VoteMI series."""
    from VoteMILib import mrml

    point = mrml.series_point(seriesNode, row)
    if point is None:
        return False
    jumpToSlice(*point)
    return True
