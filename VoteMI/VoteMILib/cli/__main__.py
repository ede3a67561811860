"""``python -m VoteMILib.cli``: the ``votemi`` command (how the Slicer panel starts its child process)."""

import sys

from . import main

sys.exit(main())
