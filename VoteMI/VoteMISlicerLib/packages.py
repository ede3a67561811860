"""Optional Python packages, installed with Slicer's own tools the first time a feature needs them, after the
user agreed: transformers (and torch, through the PyTorch extension) for the in-process model, highdicom for
DICOM export. Nothing is installed while Slicer runs its tests."""

from __future__ import annotations

import importlib
import importlib.util

import slicer
from slicer.i18n import tr as _


def installPackage(requirement, moduleName, purpose):
    """Install ``requirement`` with Slicer's own tools, after the user agreed; True if ``moduleName`` is
    importable then. ``purpose`` completes "... needs the Python package" in the question."""
    try:  # a submodule: not an attribute of ``slicer`` until someone imports it
        import slicer.packaging as slicerPackaging
    except ImportError:
        slicerPackaging = None
    if slicerPackaging is not None and hasattr(slicerPackaging, "pip_ensure"):  # 5.12+: asks, shows progress
        from packaging.requirements import Requirement

        slicerPackaging.pip_ensure([Requirement(requirement)], requester="VoteMI")
    else:
        if slicer.app.testingEnabled():
            return False
        if not slicer.util.confirmOkCancelDisplay(
                _("{purpose} needs the Python package '{package}'. Install it now?").format(
                    purpose=purpose, package=requirement), windowTitle="VoteMI"):
            return False
        progress = slicer.util.createProgressDialog(
            labelText=_("Installing {package}...").format(package=requirement), maximum=0, windowTitle="VoteMI")
        try:
            slicer.app.processEvents()
            slicer.util.pip_install(requirement)
        finally:
            progress.close()
    importlib.invalidate_caches()
    return importlib.util.find_spec(moduleName) is not None


def ensureInProcessDependencies():
    """Install torch (through the PyTorch extension) and transformers when the user asks for an in-process model.

    Returns False if the user declined or something is missing; nothing is installed while testing.
    """
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
            if torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=">=2.2") is None:
                return False
    if importlib.util.find_spec("transformers") is None:
        return installPackage("transformers>=5.0", "transformers", _("The in-process model"))
    return True


def ensureDicomExportDependencies():
    """pydicom (shipped with Slicer) and highdicom, installed on first use after the user agreed."""
    for requirement, moduleName in (("pydicom>=2.4", "pydicom"), ("highdicom>=0.23", "highdicom")):
        if importlib.util.find_spec(moduleName) is None and not installPackage(requirement, moduleName,
                                                                                 _("DICOM export")):
            return False
    return True
