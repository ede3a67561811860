"""The report node: its text, metadata and findings, streamed in, edited, reviewed and read back.
The only code that reads or writes the report node's format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from .nodes import _file_into, _tag, votemi_folder, votemi_nodes
from .views import slice_node_plane, slice_nodes

#: Report node attribute: SHA-1 of the text VoteMI last wrote (compared to detect user edits).
WRITTEN_DIGEST_ATTRIBUTE = "VoteMI.WrittenSHA1"
#: Report node attribute holding the report metadata as JSON.
REPORT_META_ATTRIBUTE = "VoteMI.ReportMeta"
#: Prefix of the one-value report attributes (model, server, created, complete, ...).
REPORT_ATTRIBUTE_PREFIX = "VoteMI.Report."
#: Attribute of the report node holding its findings and their review as JSON (see :mod:`VoteMILib.findings`).
FINDINGS_ATTRIBUTE = "VoteMI.Findings"


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
    from ..findings import Findings

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
    from ..vlm.report import Report

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
