"""The panel's *Guide* segments list: the guide segmentation's segments, each checked unless the user unchecked
it, and the guide a run receives."""

from __future__ import annotations

import qt
from slicer.i18n import tr as _


class GuideSegments:
    """The segments list of the guide segmentation.

    ``segmentsList`` is the panel's list widget; ``parameterNode`` returns the panel's VoteMIParameterNode;
    the segment IDs the user unchecked are kept, one per line, in its attribute ``skippedAttribute`` (saved with
    the scene, so that new segments are shown checked).
    """

    def __init__(self, segmentsList, parameterNode, skippedAttribute):
        self.segmentsList = segmentsList
        self._parameterNode = parameterNode
        self._skippedAttribute = skippedAttribute
        #: What the list shows: (segmentation ID, segments, skipped IDs); None forces the next show.
        self.shown = None

    def _skipped(self):
        return set((self._parameterNode().parameterNode.GetAttribute(self._skippedAttribute) or "").splitlines())

    def show(self):
        """List the guide segmentation's segments, checked unless the user unchecked them (only when they changed)."""
        from VoteMILib import mrml

        node = self._parameterNode()
        segments = mrml.segments_of(node.guideSegmentation)
        skipped = self._skipped()
        shown = (node.guideSegmentation.GetID() if node.guideSegmentation else None, segments, skipped)
        if shown == self.shown:
            return
        self.shown = shown
        segmentsList = self.segmentsList
        wasBlocked = segmentsList.blockSignals(True)
        segmentsList.clear()
        for segmentID, name in segments:
            item = qt.QListWidgetItem(name)
            item.setData(qt.Qt.UserRole, segmentID)
            item.setFlags(qt.Qt.ItemIsEnabled | qt.Qt.ItemIsUserCheckable)
            item.setCheckState(qt.Qt.Unchecked if segmentID in skipped else qt.Qt.Checked)
            segmentsList.addItem(item)
        segmentsList.blockSignals(wasBlocked)

    def onChanged(self, item=None) -> None:
        """The user checked or unchecked a segment: keep the unchecked ones in the parameter node."""
        from VoteMILib import mrml

        node = self._parameterNode()
        if not node:
            return
        segmentsList = self.segmentsList
        items = [segmentsList.item(row) for row in range(segmentsList.count)]
        skipped = [item.data(qt.Qt.UserRole) for item in items if item.checkState() != qt.Qt.Checked]
        # The list already shows this: it is not rebuilt from within its own signal.
        self.shown = (node.guideSegmentation.GetID() if node.guideSegmentation else None,
                      mrml.segments_of(node.guideSegmentation), set(skipped))
        node.parameterNode.SetAttribute(self._skippedAttribute, "\n".join(skipped))

    def guide(self):
        """The panel's guide as {"segmentation", "segmentIDs", "points", "thenUnsupervised"}, or None when nothing
        guides (the form ``VoteMIRun.start`` takes)."""
        from VoteMILib import mrml

        node = self._parameterNode()
        segmentation = node.guideSegmentation
        skipped = self._skipped()
        segmentIDs = [segmentID for segmentID, _name in mrml.segments_of(segmentation) if segmentID not in skipped]
        if segmentation is not None and not segmentIDs:
            raise ValueError(_("Check at least one segment of {name}, or choose no segmentation.").format(
                name=segmentation.GetName()))
        points = node.guidePoints
        if segmentation is None and points is None:
            return None
        return {"segmentation": segmentation, "segmentIDs": segmentIDs, "points": points,
                "thenUnsupervised": bool(node.guideThenUnsupervised)}
