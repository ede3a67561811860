"""Optional Python packages, installed with Slicer's own tools the first time a feature needs them, after the
user agreed: transformers (and torch, through the PyTorch extension) for the in-process model, pydicom 3 and
highdicom for DICOM export. Nothing is installed while Slicer runs its tests.

A user who declines an install gets :class:`InstallDeclined` (a one-line reason for the status line), never an
error box: declining is a choice, not a failure.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys

import slicer
from slicer.i18n import tr as _

#: ``dicom_export`` writes with ``dcmwrite(..., enforce_file_format=True)``, which came with pydicom 3.
PYDICOM_REQUIREMENT = "pydicom>=3.0.1"
HIGHDICOM_REQUIREMENT = "highdicom>=0.23"
#: The text ``slicer.packaging.pip_ensure`` (5.12+) raises its RuntimeError with when the user says no.
PIP_ENSURE_DECLINED = "User declined package installation"


class InstallDeclined(Exception):
    """The user declined to install a package a feature needs; ``str()`` is a one-line status."""


def _declined(purpose, requirement):
    return InstallDeclined(_("{purpose}: '{package}' was not installed.").format(purpose=purpose,
                                                                                   package=requirement))


def _pipInstallWithProgress(requirement):
    """``slicer.util.pip_install`` behind a busy progress dialog (Slicer before 5.12 shows none)."""
    progress = slicer.util.createProgressDialog(
        labelText=_("Installing {package}...").format(package=requirement), maximum=0, windowTitle="VoteMI")
    try:
        slicer.app.processEvents()
        slicer.util.pip_install(requirement)
    finally:
        progress.close()


def installPackage(requirement, moduleName, purpose):
    """Install ``requirement`` with Slicer's own tools, after the user agreed; True if ``moduleName`` is
    importable then, False while Slicer runs its tests. ``purpose`` completes "... needs the Python package" in
    the question. Raises :class:`InstallDeclined` if the user says no."""
    try:  # a submodule: not an attribute of ``slicer`` until someone imports it
        import slicer.packaging as slicerPackaging
    except ImportError:
        slicerPackaging = None
    if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):  # 5.12+: asks, shows progress
        from packaging.requirements import Requirement

        try:
            slicerPackaging.pip_ensure([Requirement(requirement)], requester="VoteMI")
        except RuntimeError as error:
            if str(error) == PIP_ENSURE_DECLINED:
                raise _declined(purpose, requirement) from None
            raise
    else:
        if slicer.app.testingEnabled():
            return False
        if not slicer.util.confirmOkCancelDisplay(
                _("{purpose} needs the Python package '{package}'. Install it now?").format(
                    purpose=purpose, package=requirement), windowTitle="VoteMI"):
            raise _declined(purpose, requirement)
        _pipInstallWithProgress(requirement)
    importlib.invalidate_caches()
    return importlib.util.find_spec(moduleName) is not None


def ensureInProcessDependencies():
    """Install torch (through the PyTorch extension) and transformers when the user asks for an in-process model.

    Returns False if something is missing that cannot be installed from here (the user was told why); nothing is
    installed while testing. Raises :class:`InstallDeclined` if the user declined an install.
    """
    purpose = _("The in-process model")
    if importlib.util.find_spec("torch") is None:
        try:
            import PyTorchUtils
        except ModuleNotFoundError:
            slicer.util.errorDisplay(
                _("An in-process model needs PyTorch. Install the 'PyTorch' extension from the Extensions "
                  "Manager, restart Slicer, and try again; or run the model in a server (Ollama, vLLM, "
                  "'votemi serve') and choose the openai or ollama protocol."), windowTitle="VoteMI")
            return False
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            # installTorch returns None when the user says no to its own question.
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=">=2.2") is None:
                raise _declined(purpose, "torch")
    if importlib.util.find_spec("transformers") is None:
        return installPackage("transformers>=5.0", "transformers", purpose)
    return True


def _releaseNumbers(version):
    """(3, 0, 1) for "3.0.1", "3.0.1rc1" or "3.0.1.dev0": the leading numbers only, enough for a minimum."""
    numbers = []
    for part in str(version).split("."):
        digits = ""
        for character in part:
            if not character.isdigit():
                break
            digits += character
        if not digits:
            break
        numbers.append(int(digits))
        if len(digits) < len(part):
            break
    return tuple(numbers)


def _pydicomIsNewEnough(version):
    # Compared without ``packaging``: not every Slicer ships it importable.
    return _releaseNumbers(version) >= _releaseNumbers(PYDICOM_REQUIREMENT.split(">=")[1])


def loadedPydicomVersion():
    """The version of the pydicom this Slicer has imported, or None if none is imported yet."""
    module = sys.modules.get("pydicom")
    return getattr(module, "__version__", None) if module is not None else None


def installedPydicomVersion():
    """The version of the pydicom on disk (what the next Slicer session imports), or None."""
    try:
        return importlib.metadata.version("pydicom")
    except importlib.metadata.PackageNotFoundError:
        return None


def dicomExportRestartReason():
    """Why Export to DICOM must wait for a restart (a sentence for its tooltip), or None.

    True when the pydicom on disk is new enough but Slicer still runs an older one it imported at start-up
    (Slicer 5.10 ships pydicom 2.4.4): the export would fail until Slicer restarts.
    """
    loaded, installed = loadedPydicomVersion(), installedPydicomVersion()
    if loaded is None or installed is None or _pydicomIsNewEnough(loaded):
        return None
    if not _pydicomIsNewEnough(installed):
        return None
    return _("pydicom {installed} was installed, but Slicer still runs pydicom {loaded}: restart Slicer to "
             "export to DICOM.").format(installed=installed, loaded=loaded)


def _upgradePydicom(installed):
    """Install pydicom 3 (and highdicom) over an older pydicom, after saying so; True if usable in this session.

    When Slicer has already imported the old pydicom (Slicer 5.10 does at start-up), the question says that the
    export works only after a restart, and the restart is offered once installed; False then.
    """
    purpose = _("DICOM export")
    if slicer.app.testingEnabled():
        return False
    loaded = loadedPydicomVersion()
    if loaded is not None:
        question = _("DICOM export needs '{package}'; this Slicer runs pydicom {loaded}. Installing replaces it, "
                     "and the export works only after Slicer restarts. Install now?").format(
            package=PYDICOM_REQUIREMENT, loaded=loaded)
    else:
        question = _("DICOM export needs '{package}'; pydicom {installed} is installed. Replace it now?").format(
            package=PYDICOM_REQUIREMENT, installed=installed)
    if not slicer.util.confirmOkCancelDisplay(question, windowTitle="VoteMI"):
        raise _declined(purpose, PYDICOM_REQUIREMENT)
    # pip itself: pip_ensure (5.12+) pins what is installed, which would forbid this upgrade.
    _pipInstallWithProgress(f"{PYDICOM_REQUIREMENT} {HIGHDICOM_REQUIREMENT}")
    importlib.invalidate_caches()
    if loaded is None:
        return True
    if slicer.util.confirmYesNoDisplay(
            _("pydicom {installed} is installed. Restart Slicer now to load it?").format(
                installed=installedPydicomVersion()), windowTitle="VoteMI"):
        slicer.util.restart()
    return False


def ensureDicomExportDependencies():
    """pydicom 3 and highdicom, installed on first use after the user agreed.

    Returns True when the export can run in this session, False when not (a restart is pending, or Slicer
    runs its tests). Raises :class:`InstallDeclined` if the user declined an install.
    """
    if dicomExportRestartReason():
        return False
    installed = installedPydicomVersion()
    if installed is not None and not _pydicomIsNewEnough(installed) and not _upgradePydicom(installed):
        return False
    for requirement, moduleName in ((PYDICOM_REQUIREMENT, "pydicom"), (HIGHDICOM_REQUIREMENT, "highdicom")):
        if importlib.util.find_spec(moduleName) is None and not installPackage(requirement, moduleName,
                                                                                 _("DICOM export")):
            return False
    return True
