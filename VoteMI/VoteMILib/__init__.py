"""VoteMI engine: Vote-MI representative slice selection for 3D medical images.

Free of Qt and of ``slicer`` imports so that it runs, and is tested, anywhere; the Slicer
module ``VoteMI.py`` is a thin layer over it.
"""

__version__ = "0.1.0"
