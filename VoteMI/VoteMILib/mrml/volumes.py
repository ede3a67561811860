"""Volumes: a volume node's voxels and geometry as an engine :class:`~VoteMILib.volumes.Volume`, the
NRRD file the child process reads, the display window, and a volume node made from an array.
"""

from __future__ import annotations

import numpy as np

from ..volumes import Volume, VolumeError, volume_from_array


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

    from ..outputs import OutputError

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
