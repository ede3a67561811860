"""Trained patch encoder: training (torch), numpy inference, model files, and the CLI around them."""

import json
import os
import sys
import time

import numpy as np
import pytest

from VoteMILib.encoders import ModelError, load_patch_encoder, save_model
from VoteMILib.features import PATCH_SIZE
from VoteMILib.volumes import VolumeError

DATA = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data"))
#: Two cases with masks and an extra sequence, small enough to train on in seconds.
CASES = ("tcga_du_7294", "pyradiomics_brain2")

pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason=f"shared cases not found at {DATA}")


def _link_cases(folder, names=CASES):
    """A cases folder of symlinks to shared cases (image, mask, extras), outside the project."""
    for name in names:
        os.makedirs(folder / name)
        for entry in sorted(os.listdir(os.path.join(DATA, name))):
            os.symlink(os.path.join(DATA, name, entry), folder / name / entry)
    return folder


def _tiny_training(folder, out, seed=0):
    from VoteMILib.training import train_encoder

    return train_encoder(folder, out, epochs=2, latent=6, seed=seed, hidden=(32, 16), batch_size=128,
                         patches_per_scan=1500, log=lambda message: None)


@pytest.fixture(scope="module")
def cases_dir(tmp_path_factory):
    return _link_cases(tmp_path_factory.mktemp("cases"))


@pytest.fixture(scope="module")
def trained(cases_dir, tmp_path_factory):
    pytest.importorskip("torch")
    return _tiny_training(cases_dir, tmp_path_factory.mktemp("model") / "encoder.npz")


@pytest.fixture(scope="module")
def encoder(trained):
    return load_patch_encoder(trained.path)


@pytest.fixture(scope="module")
def real_patches():
    from VoteMILib.features import extract_patches
    from VoteMILib.preprocess import make_working_grid
    from VoteMILib.volumes import load_volume

    grid = make_working_grid(load_volume(os.path.join(DATA, "tcga_du_7294", "image.nii.gz")))
    return extract_patches(grid.data, grid.mask).pixels


# --- training ----------------------------------------------------------------------------------------


def test_training_reads_images_and_extras_never_masks(trained):
    names = trained.metadata["training"]["scan_names"]
    assert len(names) == 3  # tcga_du_7294 image + FLAIR, pyradiomics_brain2 image
    assert not any("mask" in name for name in names)
    assert len(trained.history) == 2 and all(np.isfinite(row["loss"]) for row in trained.history)


def test_label_maps_in_a_plain_folder_are_skipped(tmp_path):
    from VoteMILib.training import collect_patches, find_training_scans

    os.symlink(os.path.join(DATA, "pyradiomics_brain2", "image.nrrd"), tmp_path / "scan.nrrd")
    os.symlink(os.path.join(DATA, "pyradiomics_brain2", "mask.nrrd"), tmp_path / "lesion.nrrd")
    (tmp_path / "notes.txt").write_text("not a scan")
    paths = find_training_scans(tmp_path)
    assert [os.path.basename(p) for p in paths] == ["lesion.nrrd", "scan.nrrd"]
    messages = []
    pixels, used = collect_patches(paths, patches_per_scan=500, log=messages.append)
    assert [os.path.basename(p) for p in used] == ["scan.nrrd"]
    assert pixels.shape == (500, PATCH_SIZE * PATCH_SIZE)
    assert any("label map" in message for message in messages)


def test_numpy_inference_equals_torch(trained, encoder, real_patches):
    from VoteMILib.training import torch_latent_means

    expected = torch_latent_means(trained.model, real_patches)
    got = encoder.encode(real_patches)
    assert got.shape == (len(real_patches), 6) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)
    assert trained.metadata["training"]["numpy_torch_max_abs_diff"] < 1e-5


def test_training_is_deterministic(trained, cases_dir, tmp_path):
    again = load_patch_encoder(_tiny_training(cases_dir, tmp_path / "again.npz").path)
    first = load_patch_encoder(trained.path)
    for (w1, b1), (w2, b2) in zip(first.weights, again.weights):
        assert np.array_equal(w1, w2) and np.array_equal(b1, b2)
    other = load_patch_encoder(_tiny_training(cases_dir, tmp_path / "other.npz", seed=1).path)
    assert not np.array_equal(first.weights[0][0], other.weights[0][0])


def test_training_leaves_torch_settings_as_they_were(cases_dir, tmp_path):
    torch = pytest.importorskip("torch")
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    _tiny_training(cases_dir, tmp_path / "m.npz")
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == deterministic
    assert torch.equal(torch.get_rng_state(), state)


# --- numpy encoder -----------------------------------------------------------------------------------


def test_sequences_are_encoded_separately_and_concatenated(encoder, real_patches):
    pixels = real_patches[:500]
    stacked = np.stack([pixels, 1.0 - pixels], axis=1)
    features = encoder.transform(stacked)
    assert features.shape == (500, 12)
    # Equal up to float32 rounding: BLAS blocks a batch of 1000 patches differently from one of 500.
    np.testing.assert_allclose(features[:, :6], encoder.encode(pixels), atol=1e-5, rtol=0)
    np.testing.assert_allclose(features[:, 6:], encoder.encode(1.0 - pixels), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="patches of shape"):
        encoder.transform(np.zeros((3, 1, 4, 4), np.float32))


def test_inference_is_fast(tmp_path):
    """Default-size model on 30k patches: the budget is well under 100 ms; 0.5 s leaves room for busy CI."""
    rng = np.random.default_rng(0)
    sizes = (64, 128, 64, 10)
    weights = [(rng.standard_normal((a, b)).astype(np.float32) * 0.1, np.zeros(b, np.float32))
               for a, b in zip(sizes[:-1], sizes[1:])]
    save_model(tmp_path / "m.npz", weights, {"architecture": "mlp", "patch_size": 8, "latent_dim": 10,
                                              "activation": "relu"})
    model = load_patch_encoder(tmp_path / "m.npz")
    patches = rng.random((30000, 1, 8, 8), dtype=np.float32)
    best = np.inf
    for _ in range(5):
        started = time.perf_counter()
        model.transform(patches)
        best = min(best, time.perf_counter() - started)
    assert best < 0.5


def test_describe_records_the_model(encoder):
    info = encoder.describe()
    assert info["name"] == "vae" and info["latent_dim"] == 6 and info["hidden"] == [32, 16]
    assert info["trained_epochs"] == 2 and info["trained_seed"] == 0 and len(info["sha256"]) == 16
    json.dumps(info)


# --- selection and CLI with --encoder ----------------------------------------------------------------


def test_selection_with_encoder_is_deterministic(encoder):
    from VoteMILib.selection import select_slices
    from VoteMILib.volumes import load_volume

    volume = load_volume(os.path.join(DATA, "tcga_du_7294", "image.nii.gz"))
    extra = load_volume(os.path.join(DATA, "tcga_du_7294", "flair.nii.gz"))
    runs = [select_slices(volume, encoder=encoder, extra_volumes=[extra], seed=3) for _ in range(2)]
    picks = [[(s.plane, s.index) for p in r.planes.values() for s in p.selected] for r in runs]
    assert picks[0] == picks[1] and len(picks[0]) == 9
    assert runs[0].settings["encoder"]["name"] == "vae"
    assert np.array_equal(runs[0].planes["axial"].scores, runs[1].planes["axial"].scores)


def test_cli_select_with_encoder(trained, tmp_path):
    from VoteMILib.cli import main

    out = tmp_path / "sel.json"
    image = os.path.join(DATA, "pyradiomics_brain2", "image.nrrd")
    assert main(["select", image, "--encoder", trained.path, "--json", str(out), "--quiet"]) == 0
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["settings"]["encoder"]["name"] == "vae"


def test_cli_bench_with_encoder(trained, tmp_path, capsys):
    from VoteMILib.cli import main

    cases = _link_cases(tmp_path / "one", CASES[1:])
    out = tmp_path / "bench.json"
    assert main(["bench", str(cases), "--encoder", trained.path, "--planes", "axial", "--mode", "findings",
                 "--json", str(out)]) == 0
    assert "| axial |" in capsys.readouterr().out
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["settings"]["encoder"] == trained.path
    means = next(iter(next(iter(document["means"].values())).values()))  # the first half's first region
    assert set(means["axial"]["findings"]) == {"hit_any", "hit_half", "distance_mm", "hit_half_top3"}


def test_cli_train_encoder(cases_dir, tmp_path, capsys):
    pytest.importorskip("torch")
    from VoteMILib.cli import main

    out = tmp_path / "cli.npz"
    assert main(["train-encoder", str(cases_dir), "--out", str(out), "--epochs", "1", "--latent", "4",
                 "--hidden", "16", "--patches-per-scan", "300", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "epoch 1/1" in printed and "wrote" in printed
    model = load_patch_encoder(out)
    assert model.latent_dim == 4 and model.metadata["training"]["seed"] == 5


def test_cli_defaults_match_training_defaults():
    from VoteMILib import training
    from VoteMILib.cli import build_parser

    args = build_parser().parse_args(["train-encoder", "folder", "--out", "m.npz"])
    assert (args.epochs, args.latent, args.hidden, args.batch_size, args.learning_rate, args.patches_per_scan,
            args.threads) == (training.EPOCHS, training.LATENT_DIM, training.HIDDEN, training.BATCH_SIZE,
                              training.LEARNING_RATE, training.PATCHES_PER_SCAN, training.THREADS)


@pytest.mark.parametrize("argv, message", [
    (["train-encoder", "/no/such/folder", "--out", "{tmp}/m.npz"], "no such folder"),
    (["train-encoder", DATA, "--out", "{tmp}/m.txt"], "must end in .npz"),
    (["train-encoder", DATA, "--out", "{tmp}"], "is a folder"),
])
def test_cli_train_encoder_errors_are_one_line(argv, message, tmp_path, capsys):
    from VoteMILib.cli import main

    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 1
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1


def test_train_encoder_without_torch_says_how_to_install(monkeypatch, tmp_path):
    from VoteMILib.training import TrainingError, train_encoder

    monkeypatch.setitem(sys.modules, "torch", None)  # makes "import torch" fail
    with pytest.raises(TrainingError, match=r"pip install torch==2\.13\.0"):
        train_encoder(DATA, tmp_path / "m.npz")


# --- bad model files ---------------------------------------------------------------------------------


def _rewrite(source, target, metadata_changes=None, drop=(), arrays=None):
    with np.load(source, allow_pickle=False) as archive:
        content = {key: archive[key] for key in archive.files if key not in drop}
    if metadata_changes:
        record = json.loads(str(content["metadata"]))
        record.update(metadata_changes)
        content["metadata"] = np.array(json.dumps(record))
    content.update(arrays or {})
    with open(target, "wb") as handle:
        np.savez(handle, **content)
    return target


@pytest.mark.parametrize("case, message", [
    ("missing", "no such encoder file"),
    ("folder", "is a folder"),
    ("text", "not a readable encoder file"),
    ("truncated", "not a readable encoder file"),
    ("no_metadata", "no metadata record"),
    ("other_format", "not a VoteMI patch-encoder file"),
    ("newer", "format version 99"),
    ("architecture", "architecture 'conv'"),
    ("patch_size", "trained on 16x16 patches"),
    ("latent", "metadata says latent_dim 3"),
    ("shape", "layer 1 has shape"),
    ("nan", "NaN or infinite"),
    ("activation", "activation 'gelu'"),
    ("pickle", "not a readable encoder file"),
])
def test_bad_model_files_give_one_line_errors(case, message, trained, tmp_path):
    good = trained.path
    path = tmp_path / "bad.npz"
    if case == "missing":
        path = tmp_path / "absent.npz"
    elif case == "folder":
        path = tmp_path
    elif case == "text":
        path.write_text("hello")
    elif case == "truncated":
        path.write_bytes(open(good, "rb").read()[:300])
    elif case == "no_metadata":
        _rewrite(good, path, drop=("metadata",))
    elif case == "other_format":
        _rewrite(good, path, {"format": "something-else"})
    elif case == "newer":
        _rewrite(good, path, {"format_version": 99})
    elif case == "architecture":
        _rewrite(good, path, {"architecture": "conv"})
    elif case == "patch_size":
        _rewrite(good, path, {"patch_size": 16})
    elif case == "latent":
        _rewrite(good, path, {"latent_dim": 3})
    elif case == "shape":
        _rewrite(good, path, arrays={"layer1_weight": np.zeros((5, 16), np.float32)})
    elif case == "nan":
        _rewrite(good, path, arrays={"layer0_bias": np.full(32, np.nan, np.float32)})
    elif case == "activation":
        _rewrite(good, path, {"activation": "gelu"})
    elif case == "pickle":
        np.savez(path, metadata=np.array([{"format": "votemi-patch-vae"}], dtype=object))
    with pytest.raises(ModelError, match=message) as raised:
        load_patch_encoder(path)
    assert isinstance(raised.value, (ValueError, VolumeError)) and "\n" not in str(raised.value)


def test_patch_size_check_can_be_relaxed(trained, tmp_path):
    assert load_patch_encoder(trained.path, patch_size=None).patch_size == PATCH_SIZE
    with pytest.raises(ModelError, match="selection cuts 4x4"):
        load_patch_encoder(trained.path, patch_size=4)


def test_cli_select_with_bad_model_is_one_line(tmp_path, capsys):
    from VoteMILib.cli import main

    bad = tmp_path / "bad.npz"
    bad.write_text("not a model")
    image = os.path.join(DATA, "pyradiomics_brain2", "image.nrrd")
    assert main(["select", image, "--encoder", str(bad), "--quiet"]) == 1
    error = capsys.readouterr().err
    assert error.startswith("votemi: error:") and "not a readable encoder file" in error and error.count("\n") == 1


def test_encoder_module_does_not_import_torch():
    import subprocess

    code = ("import sys, VoteMILib.encoders, VoteMILib.cli.train_encoder, VoteMILib.cli; "
            "VoteMILib.cli.build_parser(); print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
                            check=True)
    assert result.stdout.strip() == "False"
