"""Slice views: which plane a view shows, and moving the views to a slice.
"""

from __future__ import annotations

import numpy as np

from .volumes import matrix_to_numpy


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
