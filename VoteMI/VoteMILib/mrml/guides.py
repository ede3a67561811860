"""Guides: a segmentation's segments and a point list the user gives, as files and words for the
child process.
"""

from __future__ import annotations

import numpy as np

from .attributes import ROLE_ATTRIBUTE
from .nodes import _remove_node
from .volumes import _write_array_file, ijk_to_world_matrix


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
    from ..guided import CUE_POINT, CUE_SEGMENTATION, Guide, Structure

    structures = [Structure(CUE_SEGMENTATION, number, name) for number, name in enumerate(segment_names, start=1)]
    structures += [Structure(CUE_POINT, number, f"point {number}", ras=(0.0, 0.0, 0.0))
                   for number in range(1, points + 1)]
    return Guide(structures=structures).describe()
