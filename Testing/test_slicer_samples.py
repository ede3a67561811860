"""*Load sample*: a Sample Data volume becomes the input, ready for the tutorial (Qt harness, real MRML).

Slicer's SampleData module downloads from the internet inside the application, so a stand-in takes its place:
``SampleDataLogic().downloadSample(name)`` adds a real volume (the blob phantom) under that name to the scene, as
the module does, and records what was asked for.
"""

from __future__ import annotations

import sys
import types

import pytest

pytest.importorskip("slicer", reason="needs the slicer-core wheel (pip install -e .[mrml])")
pytest.importorskip("PyQt5", reason="needs PyQt5 (pip install -e .[test])")


class SampleData:
    """Slicer's SampleData module: ``downloadSample`` returns the loaded volume node, or None on failure."""

    def __init__(self, headless_slicer, available=("MRBrainTumor1", "CTChest")):
        self.scene, self.available, self.asked = headless_slicer.scene, available, []
        module = types.ModuleType("SampleData")
        module.SampleDataLogic = lambda: types.SimpleNamespace(downloadSample=self.downloadSample)
        self.module = module

    def downloadSample(self, name):
        from VoteMILib import mrml
        from VoteMISelfTestLib import blob_phantom

        self.asked.append(name)
        if name not in self.available:
            return None
        phantom = blob_phantom(seed=0)
        return mrml.add_volume_from_array(self.scene, phantom.array, phantom.ijk_to_ras, name)


@pytest.fixture
def sample_data(headless_slicer, monkeypatch):
    made = SampleData(headless_slicer)
    monkeypatch.setitem(sys.modules, "SampleData", made.module)
    return made


def _choose(panel, index):
    panel.ui.sampleComboBox.activated[int].emit(index)
    panel.qapp.processEvents()


def test_load_sample_offers_the_tutorial_volumes_and_makes_the_chosen_one_the_input(panel, sample_data):
    panel.setup()
    box = panel.ui.sampleComboBox
    assert [box.itemText(i) for i in range(box.count)] == [
        "Load sample...", "MRBrainTumor1 (brain MRI with a tumour)", "CTChest (chest CT)"]
    _choose(panel, 2)
    assert sample_data.asked == ["CTChest"]
    assert panel.widget._parameterNode.inputVolume.GetName() == "CTChest"
    assert panel.ui.statusLabel.text == "Sample CTChest loaded: it is the input volume."
    assert box.currentIndex == 0 and panel.ui.selectButton.enabled
    _choose(panel, 1)  # a second sample replaces the input, as choosing it in the selector would
    assert panel.widget._parameterNode.inputVolume.GetName() == "MRBrainTumor1"
    panel.click(panel.ui.selectButton)  # the tutorial's next step runs on it
    panel.run_until(panel.idle, 90)
    assert not panel.slot_errors and not panel.dialogs.of("errorDisplay"), panel.dialogs.shown
    assert panel.ui.statusLabel.text.startswith("Done")


def test_a_sample_that_does_not_load_says_so_and_keeps_the_input(panel, headless_slicer, sample_data):
    sample_data.available = ()
    panel.setup()
    _choose(panel, 1)
    errors = panel.dialogs.of("errorDisplay")
    assert len(errors) == 1 and "did not load MRBrainTumor1" in errors[0] + panel.dialogs.details[-1]
    assert panel.widget._parameterNode.inputVolume is None
    # Slicer's tryWithErrorDisplay raises again after the box: the Python console shows it, as for any error.
    assert [str(error) for error in panel.slot_errors] == [
        "Slicer's Sample Data module did not load MRBrainTumor1 (see the error log)."]
