"""VoteMI on Windows: the child commands the panel starts run without any POSIX-only module.

CI runs on Linux only, so Windows is stood in for by a child interpreter in which the POSIX-only modules
cannot be imported and ``os.sysconf`` does not exist, as on Windows. The blocking applies to every import of
VoteMI's own code (``VoteMILib``, ``VoteMISelfTestLib``); for ``select``, ``describe`` and ``models`` it applies
to every library as well (numpy, SciPy, SimpleITK, Pillow and the standard library ship for Windows and must
not reach for them either). Dask's dependency psutil imports ``resource`` on Linux and its own Windows
module on Windows, so ``batch`` blocks only what VoteMI's own code imports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from VoteMISelfTestLib import LOOPBACK_REPORT, LoopbackServer

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
BRAIN = DATA / "pyradiomics_brain1" / "image.nrrd"
MODULE_DIR = str(Path(__file__).resolve().parents[1] / "VoteMI")

#: Modules Python has on Linux and macOS only.
POSIX_ONLY = ("resource", "fcntl", "termios", "pwd", "grp", "pty", "tty", "syslog")

#: Run in the child before VoteMI is imported: POSIX-only imports fail, and ``os.sysconf`` is gone, for
#: every caller (``everywhere``) or for VoteMI's own modules only.
BLOCKER = r"""
import builtins, os, sys
BLOCKED = set(sys.argv[1].split(","))
EVERYWHERE = sys.argv[2] == "everywhere"
OWN = ("VoteMILib", "VoteMISelfTestLib", "VoteMISlicerLib")

def _ours(depth):
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not name.startswith(("importlib", "_frozen_importlib")):
            return name.split(".")[0] in OWN
        frame = frame.f_back
    return False

for name in BLOCKED:
    sys.modules.pop(name, None)
_import = builtins.__import__
def _blocking_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.split(".")[0] in BLOCKED and (EVERYWHERE or _ours(2)):
        raise ModuleNotFoundError(f"No module named {name!r} (blocked: not on Windows)", name=name)
    return _import(name, globals, locals, fromlist, level)
builtins.__import__ = _blocking_import

_sysconf = os.sysconf
if EVERYWHERE:
    del os.sysconf
else:
    def _sysconf_outside_voteMI(name):
        if _ours(2):
            raise AttributeError("module 'os' has no attribute 'sysconf' (blocked: not on Windows)")
        return _sysconf(name)
    os.sysconf = _sysconf_outside_voteMI

from VoteMILib.cli import main
sys.exit(main(sys.argv[3:]))
"""


def run_without_posix(arguments, scope="everywhere", cwd=None, timeout=300):
    """``votemi ARGUMENTS`` in a child interpreter (the venv's) without POSIX-only modules."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([MODULE_DIR, os.environ.get("PYTHONPATH", "")]).rstrip(
        os.pathsep), PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, "-c", BLOCKER, ",".join(POSIX_ONLY), scope, *map(str, arguments)],
                          capture_output=True, text=True, encoding="utf-8", env=env, cwd=cwd, timeout=timeout)


def assert_ran(completed):
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "blocked: not on Windows" not in completed.stderr


def test_the_blocker_blocks_what_it_names():
    """The stand-in for Windows itself: without it, the tests below could not fail."""
    probe = ("import sys, runpy\n"
             "try:\n import resource\nexcept ModuleNotFoundError as e:\n print('blocked', e)\n")
    completed = subprocess.run([sys.executable, "-c", BLOCKER.replace("from VoteMILib.cli import main\n"
                                                                      "sys.exit(main(sys.argv[3:]))", probe),
                                ",".join(POSIX_ONLY), "everywhere"], capture_output=True, text=True)
    assert "blocked No module named 'resource'" in completed.stdout, completed.stderr


def test_version_and_help_without_posix_modules():
    assert_ran(run_without_posix(["--version"]))
    completed = run_without_posix(["--help"])
    assert_ran(completed)
    for command in ("select", "describe", "models", "batch", "eval", "serve", "bench", "train-encoder"):
        assert command in completed.stdout


def test_select_without_posix_modules(tmp_path):
    completed = run_without_posix(["select", BRAIN, "--json", tmp_path / "picks.json", "--events", "--quiet"])
    assert_ran(completed)
    document = json.loads((tmp_path / "picks.json").read_text(encoding="utf-8"))
    assert set(document["planes"]) == {"axial", "coronal", "sagittal"}


def test_describe_and_models_against_a_loopback_server_without_posix_modules(tmp_path):
    with LoopbackServer() as server:
        models = run_without_posix(["models", "--server", server.url])
        assert_ran(models)
        assert server.model in models.stdout
        described = run_without_posix(["describe", BRAIN, "--server", server.url, "--model", server.model,
                                       "--slices-per-plane", "1", "--json", tmp_path / "report.json", "--events"])
        assert_ran(described)
        assert server.images_received() >= 3
    report = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert report["report_meta"]["complete"] is True
    assert LOOPBACK_REPORT.split(".")[0] in report["report"]


def test_batch_without_posix_modules_in_voteMI(tmp_path):
    pytest.importorskip("distributed")
    completed = run_without_posix(["batch", BRAIN, "--out", tmp_path / "out", "--workers", "1"],
                                  scope="voteMI-only")
    assert_ran(completed)
    summary = (tmp_path / "out" / "summary.csv").read_text(encoding="utf-8")
    assert ",ok," in summary


def test_memory_functions_fall_back_where_the_platform_does_not_tell(monkeypatch):
    from VoteMILib import batch, machine

    monkeypatch.delattr(os, "sysconf")
    monkeypatch.setitem(sys.modules, "resource", None)
    assert machine.physical_memory_bytes() is None
    assert machine.peak_memory_mb() is None
    # Without the machine's memory, the limit is what the largest case needs.
    assert batch.worker_memory_limit([], 2) == batch.WORKER_BASE_BYTES


def test_the_command_line_loads_the_batch_and_eval_engines_only_when_they_run():
    """Every child the panel starts imports the CLI: the Dask runners are not among what it loads."""
    probe = ("import sys, VoteMILib.cli; print(sorted(m for m in ('VoteMILib.batch', 'VoteMILib.evaluate', "
             "'VoteMILib.eval_scores', 'VoteMILib.machine', 'dask') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=MODULE_DIR)
    completed = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "[]"


# --- Non-ASCII names: the node's name travels as data, the child's paths are ASCII ------------------------


def test_a_volume_with_a_non_ascii_name_in_a_non_ascii_profile_folder_runs_with_ascii_relative_paths(
        panel, headless_slicer, monkeypatch, tmp_path):
    """On Windows ITK opens files through the narrow-character API: a node "Tête IRM" in a user folder "Jürgen"
    must reach the child as ASCII file names, relative to the folder it starts in, and keep its name in the
    report."""
    pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
    from VoteMILib import mrml
    from VoteMISelfTestLib import blob_phantom

    profile = tmp_path / "Jürgen Müller" / "AppData" / "Slicer 临时"
    profile.mkdir(parents=True)
    monkeypatch.setattr(panel.app, "temporaryPath", str(profile))
    phantom = blob_phantom(seed=0)
    mrml.add_volume_from_array(headless_slicer.scene, phantom.array, phantom.ijk_to_ras, "Tête IRM ✓ / T1")
    starts = []
    original = panel.module.VoteMILogic.startChild

    def start(logic, arguments, apiKey="", cwd=None):
        starts.append((list(arguments), cwd, sorted(os.listdir(cwd)) if cwd else []))
        return original(logic, arguments, apiKey, cwd)

    monkeypatch.setattr(panel.module.VoteMILogic, "startChild", start)
    panel.setup()
    panel.click(panel.ui.selectButton)
    panel.run_until(panel.idle, 90.0)
    assert not panel.slot_errors, panel.slot_errors
    assert not panel.dialogs.of("errorDisplay"), panel.dialogs.shown
    assert panel.ui.statusLabel.text.startswith("Done")
    (arguments, cwd, files), = [start for start in starts if start[0][0] == "select"]  # not the server check
    assert cwd and os.path.dirname(cwd) == os.path.join(str(profile), "VoteMI")
    image = arguments[1]
    assert image == "volume-0.nrrd" and not os.path.isabs(image)
    assert all(name.isascii() for name in files) and image in files
    assert arguments[arguments.index("--volume-name") + 1] == "Tête IRM ✓ / T1"


def test_volume_names_reach_the_report_and_the_summary(tmp_path, capsys):
    """``--volume-name`` names the image and the extras as the user knows them; too many names is one line."""
    from VoteMILib.cli import main

    code = main(["select", str(BRAIN), "--extra", str(BRAIN), "--volume-name", "Tête IRM", "--volume-name",
                 "FLAIR (Jürgen)", "--slices-per-plane", "1", "--json", str(tmp_path / "picks.json")])
    assert code == 0
    assert capsys.readouterr().out.startswith("Tête IRM:")
    code = main(["select", str(BRAIN), "--volume-name", "a", "--volume-name", "b"])
    assert code == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "2 --volume-name given for 1 volume" in error
