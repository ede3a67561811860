"""Work selection starts early on a spare core (``background.py``) gives what computing it in turn gives,
and stops with the selection; the shifted-view box maximum the cues use equals scipy's filter."""

import threading
import time

import numpy as np
import pytest
from scipy import ndimage

import engine_fixtures as ef
from VoteMILib.background import Deferred, start
from VoteMILib.cues.morphology import box_maximum
from VoteMILib.selection import Cancelled, SelectionSettings, representative_vote, select_slices
from VoteMILib.volumes import load_volume


@pytest.mark.parametrize("shape, size", [((30, 41, 27), 5), ((30, 41, 27), (5, 3, 1)), ((30, 41, 27), 3),
                                         ((2, 7, 4), 5), ((9, 1, 6), (3, 5, 7)), ((12, 12, 12), 1)])
def test_box_maximum_equals_the_maximum_filter(shape, size):
    data = np.random.default_rng(3).normal(size=shape).astype(np.float32)
    expected = ndimage.maximum_filter(data, size)
    found = box_maximum(data, size)
    assert found.dtype == data.dtype and found.flags.c_contiguous
    np.testing.assert_array_equal(found, expected)
    assert not np.shares_memory(found, data)


def test_deferred_work_runs_once_and_only_when_asked():
    calls = []

    def work(value):
        calls.append(value)
        return value * 2

    later = start(None, work, 21)
    assert isinstance(later, Deferred) and calls == []
    assert later.result() == 42 and later.result() == 42
    assert calls == [21]


def _votemi_threads():
    return [t for t in threading.enumerate() if t.name.startswith("votemi") and not t.name.startswith("votemi-")]


def _wait_for_no_votemi_threads(seconds=10.0):
    deadline = time.monotonic() + seconds
    while _votemi_threads() and time.monotonic() < deadline:
        time.sleep(0.05)
    return _votemi_threads()


@pytest.fixture(scope="module")
def normal_brain():
    assert ef.COLIN27.exists(), "apt-get install mricron-data"
    return load_volume(ef.COLIN27)


def test_a_plane_that_falls_back_gets_the_representative_vote_prepared_in_the_background(normal_brain):
    findings = select_slices(normal_brain, mode="findings")
    representative = select_slices(normal_brain, mode="representative")
    fell_back = [plane for plane, result in findings.planes.items() if result.cue == "representative"]
    assert fell_back, "a normal brain is expected to fall back in at least one plane"
    for plane in fell_back:
        np.testing.assert_array_equal(findings.planes[plane].scores, representative.planes[plane].scores)
    for key in ("eps", "clusters", "voting_patches", "noise_fraction"):
        assert findings.settings[key] == representative.settings[key]
    assert not _wait_for_no_votemi_threads(), "background threads outlived the selection"


def test_the_vote_computed_in_turn_equals_the_one_from_a_thread(normal_brain):
    from concurrent.futures import ThreadPoolExecutor

    from VoteMILib.features import PCAEncoder, extract_patches
    from VoteMILib.geometry import PLANES
    from VoteMILib.preprocess import make_working_grid
    from VoteMILib.selection import _Progress

    settings = SelectionSettings()
    grid = make_working_grid(normal_brain)
    patches = extract_patches(grid.data, grid.mask, PLANES, settings.patch_size)
    pixels = patches.pixels[:, None]
    features = np.asarray(PCAEncoder().fit(pixels).transform(pixels), dtype=np.float64)
    in_turn = representative_vote(features, settings, _Progress(None, None))
    with ThreadPoolExecutor(max_workers=2) as pool:
        threaded = start(pool, representative_vote, features, settings, _Progress(None, None)).result()
    np.testing.assert_array_equal(in_turn[0], threaded[0])
    assert in_turn[1] == threaded[1]


def test_cancel_while_the_background_vote_runs_stops_everything(normal_brain):
    messages = []

    def cancel():
        return any("Counting votes" in m for m in messages)  # the cues are done, the vote may still run

    with pytest.raises(Cancelled):
        select_slices(normal_brain, mode="findings", cancel=cancel, progress=lambda f, m: messages.append(m))
    assert not _wait_for_no_votemi_threads(), "background threads outlived a cancelled selection"


def test_the_chest_cue_gives_the_same_maps_with_the_masses_made_in_the_background():
    """The chest cue makes its chest-wall masses on the selection's spare core (``CueInput.background``)
    while it looks for nodules; both maps equal those made one after the other."""
    from concurrent.futures import ThreadPoolExecutor

    from VoteMILib.cues import CueInput, detect_region, lung_nodule
    from VoteMILib.datasets import find_cases
    from VoteMILib.preprocess import make_working_grid

    case = {c.name: c for c in find_cases(ef.DATA / "abdomen")}["crlm_1004"]  # a chest CT down to the kidneys
    grid = make_working_grid(load_volume(case.image))
    region = detect_region(grid, "CT")
    assert region.name == "chest"
    in_turn = (lung_nodule.find(CueInput(grid, region)), lung_nodule.find_below_thorax(CueInput(grid, region)))
    with ThreadPoolExecutor(max_workers=2) as pool:
        scan = CueInput(grid, region, background=pool)
        threaded = (lung_nodule.find(scan), lung_nodule.find_below_thorax(scan))
    for alone, beside in zip(in_turn, threaded):
        np.testing.assert_array_equal(alone.map, beside.map)
    assert in_turn[0].map.any() and in_turn[1].map.any(), "chest-wall masses above and soft tissue below the chest"
