"""VoteMI engine: Vote-MI representative slice selection for 3D medical images.

Free of Qt, and of ``slicer`` imports outside :mod:`VoteMILib.mrml` (the scene glue, which imports ``slicer`` inside
its functions), so that it runs, and is tested, anywhere; the Slicer module ``VoteMI.py`` and
``VoteMISlicerLib`` build the panel on it.
"""

__version__ = "0.1.0"
