"""Reading results back from the scene (also after a scene was saved and loaded): score table rows,
the slice of a plot point, the voted slices.
"""

from __future__ import annotations

import json

from ..geometry import PLANES
from .attributes import (COLUMNS_CENTER, COLUMN_IJK, COLUMN_POSITION, COLUMN_RANK, COLUMN_SCORE, COLUMN_SLICE,
                         OUTCOME_ATTRIBUTE, PLANE_ATTRIBUTE, ROLE_ATTRIBUTE)
from .nodes import votemi_nodes


def table_rows(table) -> list:
    """Rows of a VoteMI score table as dicts (slice, ijk_index, position_mm, score, rank, center_ras)."""
    data = table.GetTable()

    def column(name):
        array = data.GetColumnByName(name)
        if array is None:
            raise ValueError(f"{table.GetName()} has no column '{name}'")
        return [array.GetValue(row) for row in range(data.GetNumberOfRows())]

    slices, ijk, positions, scores, ranks = (column(name) for name in
                                             (COLUMN_SLICE, COLUMN_IJK, COLUMN_POSITION, COLUMN_SCORE, COLUMN_RANK))
    centers = list(zip(*(column(name) for name in COLUMNS_CENTER), strict=True))
    return [{"slice": int(slices[row]), "ijk_index": int(ijk[row]), "position_mm": float(positions[row]),
             "score": float(scores[row]), "rank": int(ranks[row]), "center_ras": tuple(float(c) for c in centers[row])}
            for row in range(len(slices))]


def series_point(series_node, row: int):
    """``(plane, slice centre RAS)`` of point ``row`` of a VoteMI score series, or None (not a VoteMI series, no such
    row)."""
    if series_node.GetAttribute(ROLE_ATTRIBUTE) != "series":
        return None
    table = series_node.GetTableNode()
    rows = table_rows(table) if table is not None else []
    if not 0 <= row < len(rows):
        return None
    return series_node.GetAttribute(PLANE_ATTRIBUTE), rows[row]["center_ras"]


def voted_slices(scene, volume_node) -> list:
    """Voted slices of ``volume_node`` as stored in the scene, plane by plane, best first.

    Each item is a dict with ``plane``, the keys of :func:`table_rows` and ``outcome``: the plane's
    :meth:`~VoteMILib.results.PlaneResult.outcome` (None in a scene saved before it was recorded).
    """
    picks = []
    for plane in PLANES:
        for table in votemi_nodes(scene, volume_node, role="scores", plane=plane):
            stored = table.GetAttribute(OUTCOME_ATTRIBUTE)
            outcome = json.loads(stored) if stored else None
            rows = [dict(row, plane=plane, outcome=outcome) for row in table_rows(table) if row["rank"] > 0]
            picks += sorted(rows, key=lambda row: row["rank"])
    return picks
