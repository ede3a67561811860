"""MRML layer of the VoteMI Slicer module: volumes in, marks, scores and reports out. No Qt.

Everything here works on a ``vtkMRMLScene`` and its nodes only, so it runs inside the Slicer
application and, for testing, on the MRML libraries of the ``slicer-core`` wheel. ``slicer`` and
``vtk`` are imported inside the functions; importing this module needs neither.

Nodes VoteMI adds for an input volume (all carry the attribute :data:`ROLE_ATTRIBUTE` and a
:data:`SOURCE_REFERENCE` node reference to the volume, and sit in one subject hierarchy folder):

* one markups fiducial node per plane, a control point at the centre of every voted slice,
  labelled like ``"Axial 1 (0.82)"``, coloured like the slice view that shows that plane;
* one table node per plane with every slice's position, score, IJK index, rank and centre;
* one plot series per plane (score versus RAS position) and a plot chart holding them;
* a text node with the report drafted by the vision-language model and its metadata as attributes.

Running again for the same volume replaces the marks, tables, series and chart (after
:func:`validate_selection` accepted the whole new result) and reuses the report node, which
:class:`ReportStream` fills as a report streams in. :func:`report_edited` tells whether the user
changed the report since VoteMI wrote it.

The layer is a package along its concerns, each name re-exported here so that ``from VoteMILib import mrml;
mrml.X`` reaches every public name: :mod:`.attributes` (what VoteMI writes to find its nodes again),
:mod:`.volumes`, :mod:`.guides`, :mod:`.nodes` (finding and removing VoteMI's nodes), :mod:`.marks` (applying a
selection), :mod:`.views` (slice views), :mod:`.readback` (reading results back) and :mod:`.report` (the report
node, whose format no code outside this package reads or writes).
"""

from .attributes import (ROLE_ATTRIBUTE, PLANE_ATTRIBUTE, SOURCE_REFERENCE, FOLDER_ATTRIBUTE, SELECTION_MODE_ATTRIBUTE,
                         OUTCOME_ATTRIBUTE, ROLES, PLANE_COLORS, COLUMN_SLICE, COLUMN_IJK, COLUMN_POSITION,
                         COLUMN_SCORE, COLUMN_RANK, COLUMNS_CENTER)
from .volumes import (matrix_to_numpy, ijk_to_world_matrix, volume_from_node, write_volume_file, display_window,
                      add_volume_from_array)
from .guides import (segments_of, write_segments_file, guide_points, guide_description)
from .nodes import (votemi_nodes, remove_votemi_nodes, votemi_folder)
from .marks import (SceneNodes, mark_label, apply_selection, validate_selection, clear_results,
                    show_volume_in_slice_views)
from .views import (slice_node_plane, slice_nodes, jump_to_slice, jump_to_best_slices, slice_offset_mm)
from .readback import (table_rows, series_point, voted_slices)
from .report import (WRITTEN_DIGEST_ATTRIBUTE, REPORT_META_ATTRIBUTE, REPORT_ATTRIBUTE_PREFIX, FINDINGS_ATTRIBUTE,
                     report_node, report_edited, begin_report, ReportStream, finish_report, store_findings,
                     report_findings, citation_target, jump_to_citation, report_attribute, ReportStatus, report_status,
                     report_text, edit_report_text, report_from_node, report_metadata)
