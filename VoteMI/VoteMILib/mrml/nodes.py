"""Finding and removing VoteMI's nodes: the tags every node carries and the subject hierarchy folder
they sit in.
"""

from __future__ import annotations

from .attributes import FOLDER_ATTRIBUTE, PLANE_ATTRIBUTE, ROLE_ATTRIBUTE, SOURCE_REFERENCE


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
