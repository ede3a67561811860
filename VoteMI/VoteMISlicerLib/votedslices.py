"""The panel's *Voted slices* table and the score plot's clicks: both move the slice views to a voted slice."""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _

PLOT_CLICKED_SIGNAL = "dataSelected(vtkStringArray*,vtkCollection*)"


def stoodOutCell(outcome) -> str:
    """The Stood out column: "yes: <cue>", "no (representative)", or the cue where nothing was looked for."""
    if not outcome:
        return ""
    if outcome.get("stood_out") is True:
        return _("yes: {cue}").format(cue=outcome.get("cue") or "")
    if outcome.get("stood_out") is False:
        return _("no (representative)")
    return str(outcome.get("cue") or "")


class VotedSlicesView:
    """The voted slices of the input volume as table rows, read back from the scene (``logic.votedSlices``), and
    the layout's plot view, whose clicked points jump the views (``logic.jumpToSeriesPoint``)."""

    def __init__(self, logic, table):
        self.logic = logic
        self.table = table
        self._rows = []
        self._plotView = None

    def setUp(self):
        table = self.table
        table.setColumnCount(7)
        table.setHorizontalHeaderLabels(
            [_("Plane"), _("Rank"), _("Slice"), _("Position (mm)"), _("Score"), _("Confidence"), _("Stood out")])
        header = table.horizontalHeader()
        header.setSectionResizeMode(qt.QHeaderView.ResizeToContents)  # headers and values never cut
        header.setStretchLastSection(True)
        table.setEditTriggers(qt.QAbstractItemView.NoEditTriggers)
        table.setSelectionBehavior(qt.QAbstractItemView.SelectRows)
        table.connect("cellClicked(int,int)", self.onRowClicked)

    def refresh(self, volumeNode):
        """Show the voted slices of ``volumeNode`` (None: an empty table)."""
        from VoteMILib.results import outcome_confidence, outcome_text

        table = self.table
        table.setRowCount(0)
        self._rows = self.logic.votedSlices(volumeNode) if volumeNode is not None else []
        table.setRowCount(len(self._rows))
        for row, pick in enumerate(self._rows):
            # The plane's confidence and whether anything stood out there, short enough for the panel's width
            # (the tooltip has it in full: "representative (nothing stood out), confidence 0.04"); blank for a
            # scene saved before they were recorded.
            outcome = pick.get("outcome")
            values = [pick["plane"].capitalize(), str(pick["rank"]), str(pick["slice"]),
                      f"{pick['position_mm']:+.1f}", f"{pick['score']:.3f}",
                      outcome_confidence(outcome) if outcome else "", stoodOutCell(outcome)]
            tip = _("Click to show this slice")
            if outcome:
                tip = _("{outcome}. Click to show this slice").format(outcome=outcome_text(outcome))
            for column, value in enumerate(values):
                item = qt.QTableWidgetItem(value)
                item.setToolTip(tip)
                table.setItem(row, column, item)

    def onRowClicked(self, row, column) -> None:
        from VoteMISlicerLib.marks import jumpToSlice

        if 0 <= row < len(self._rows):
            jumpToSlice(self._rows[row]["plane"], self._rows[row]["center_ras"])

    def connectPlotView(self, connect):
        """Follow clicks in the layout's first plot view (which a layout switch may replace); False: stop."""
        layoutManager = slicer.app.layoutManager() if connect else None
        plotView = None
        if layoutManager is not None and layoutManager.plotViewCount > 0:
            plotView = layoutManager.plotWidget(0).plotView()
        if self._plotView is not None and self._plotView is not plotView:
            self._plotView.disconnect(PLOT_CLICKED_SIGNAL, self.onPlotDataSelected)
            self._plotView = None
        if plotView is not None and self._plotView is None:
            plotView.connect(PLOT_CLICKED_SIGNAL, self.onPlotDataSelected)
            self._plotView = plotView

    def onPlotDataSelected(self, seriesIDs, selections) -> None:
        """A click on the score plot jumps the views to that slice."""
        for index in range(seriesIDs.GetNumberOfValues()):
            series = slicer.mrmlScene.GetNodeByID(seriesIDs.GetValue(index))
            points = selections.GetItemAsObject(index)
            if series is None or points is None or points.GetNumberOfTuples() < 1:
                continue
            if self.logic.jumpToSeriesPoint(series, int(points.GetValue(0))):
                return
