"""What VoteMI writes into the scene to find its nodes again: node attributes, references, roles,
plane colours and the score tables' column names. The report node's own attributes are in :mod:`.report`.
"""

from __future__ import annotations


#: Node attribute naming what a VoteMI node is ("marks", "scores", "series", "chart", "report").
ROLE_ATTRIBUTE = "VoteMI.Role"
#: Node attribute with the plane of a per-plane node.
PLANE_ATTRIBUTE = "VoteMI.Plane"
#: Node reference role from every VoteMI node to its input volume.
SOURCE_REFERENCE = "VoteMISource"
#: Subject hierarchy item attribute marking VoteMI's folder (value: the input volume's node ID).
FOLDER_ATTRIBUTE = "VoteMI.Folder"
#: Score table and marks attribute: how the slices were chosen ("findings", "guided by the segment 'x'", ...).
SELECTION_MODE_ATTRIBUTE = "VoteMI.SelectionMode"
#: On a score table: its plane's cue, whether anything stood out and the confidence (PlaneResult.outcome, JSON).
OUTCOME_ATTRIBUTE = "VoteMI.Outcome"

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
