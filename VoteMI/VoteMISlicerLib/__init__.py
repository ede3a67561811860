"""The Slicer side of the VoteMI module: what needs the Slicer application, for ``VoteMILogic`` and the panel.

``VoteMI.py`` holds the module, its panel, ``VoteMILogic`` and the self-test; the engine
(``VoteMILib``) holds everything that runs without Slicer. What is left needs ``slicer`` (its scene,
its application, its DICOM database and package tools) and lives here, one concern per module:

* :mod:`.run` - one Select / Select & Describe run in a child process (``VoteMIRun``), the run folder,
  starting the child and the describe settings it receives;
* :mod:`.marks` - the selection's marks, score plot and slice-view jumps in the scene;
* :mod:`.servers` - the panel's messages about the server URL, and the server check in a child;
* :mod:`.reports` - the report's summary line, export to text, HTML, PDF and the DICOM database;
* :mod:`.packages` - installing the optional Python packages on first use;
* the panel's helper classes: :mod:`.serverstatus` (the server status line), :mod:`.review` (the report box and
  the findings review, copy, save and export), :mod:`.votedslices` (the voted slices table and plot clicks) and
  :mod:`.guide` (the guide segments list).

``VoteMI.py`` imports these only inside its functions: it must load (and say why it cannot run) in
Slicers whose Python is too old for them.
"""
