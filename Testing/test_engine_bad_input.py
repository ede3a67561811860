"""Every expected bad input: a one-line error naming the problem, a non-zero exit, no traceback."""

from __future__ import annotations

import gzip
import os

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import cli
from VoteMILib.volumes import MAX_VOXELS, VolumeError, load_volume, volume_from_array

sitk = pytest.importorskip("SimpleITK")


def _noise(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _with(array, index, value):
    array = array.copy()
    array[index] = value
    return array


def _cut(data: bytes) -> bytes:
    return data[: len(data) * 2 // 3]


def _write_cut(path, array):
    ef.write_array(path, array)
    path.write_bytes(_cut(path.read_bytes()))


def _make_bad_files(folder):
    """name -> (path, words the one-line error must contain)."""
    f = {}

    def put(name, writer, *words):
        path = folder / name
        writer(path)
        f[name] = (path, words)

    f["missing.nii.gz"] = (folder / "missing.nii.gz", ("no such file",))
    put("garbage.nii.gz", lambda p: p.write_bytes(np.random.default_rng(1).bytes(4096)), "cannot read")
    put("notes.txt", lambda p: p.write_text("not an image\n"), "cannot read")
    put("empty.nrrd", lambda p: p.write_bytes(b""), "cannot read")
    # Cut-off downloads: a NIfTI header promising 64^3 floats followed by half of them (ITK alone would
    # read these without complaint, zero-filling the rest), and MHA/NRRD files cut short.
    half = _noise((64, 64, 64)).tobytes()[: 64 ** 3 * 2]
    put("truncated.nii", lambda p: p.write_bytes(ef.nifti1_bytes((64, 64, 64), data=half)), "truncated")
    put("truncated.nii.gz", lambda p: p.write_bytes(gzip.compress(ef.nifti1_bytes((64, 64, 64), data=half))),
        "truncated")
    whole = gzip.compress(ef.nifti1_bytes((64, 64, 64), data=_noise((64, 64, 64)).tobytes()))
    put("cut_stream.nii.gz", lambda p: p.write_bytes(_cut(whole)), "truncated")
    put("truncated.mha", lambda p: _write_cut(p, ef.head_phantom()), "cannot read", "not read completely")
    put("truncated.nrrd", lambda p: _write_cut(p, ef.head_phantom()), "cannot read")
    put("flat.png", lambda p: ef.write_array(p, (_noise((32, 32)) * 255).astype(np.uint8), spacing=(1, 1)), "2D")
    put("flat.nii.gz", lambda p: ef.write_array(p, _noise((32, 32)), spacing=(1, 1)), "2D")
    put("series.nii.gz", lambda p: ef.write_array(p, _noise((3, 16, 16, 16)), spacing=(1, 1, 1, 1)), "4D")
    put("rgb.nrrd", lambda p: ef.write_array(p, (_noise((16, 16, 16, 3)) * 255).astype(np.uint8), vector=True),
        "3 components")
    put("zeros.nii.gz", lambda p: ef.write_array(p, np.zeros((16, 16, 16), np.float32)), "all zero")
    put("constant.nii.gz", lambda p: ef.write_array(p, np.full((16, 16, 16), 7, np.int16)), "constant")
    # ITK's NIfTI reader turns NaN/inf into 0, so these travel as NRRD and MHA, which keep them.
    put("nan.nrrd", lambda p: ef.write_array(p, _with(ef.head_phantom(), (20, 20, 20), np.nan)), "NaN or infinite")
    put("inf.mha", lambda p: ef.write_array(p, _with(ef.head_phantom(), (5, 6, 7), -np.inf)), "NaN or infinite")
    put("one_slice.nii.gz", lambda p: ef.write_array(p, _noise((1, 32, 32))), "only 1 slice", "along K")
    put("one_row.nrrd", lambda p: ef.write_array(p, _noise((32, 1, 32))), "only 1 slice", "along J")
    put("two_columns.mha", lambda p: ef.write_array(p, _noise((32, 32, 2))), "only 2 slice", "along I")
    # Headers alone, claiming over a billion voxels: refused before any voxel is read.
    put("huge.nii", lambda p: p.write_bytes(ef.nifti1_bytes((2000, 2000, 300), datatype=2, bitpix=8)),
        "1,200,000,000 voxels", "more than")
    # (ITK opens a detached NRRD data file with the header: give it a 16-byte one.)
    (folder / "huge.raw").write_bytes(b"\0" * 16)
    put("huge.nhdr", lambda p: p.write_text(
        "NRRD0004\ntype: unsigned char\ndimension: 3\nspace: left-posterior-superior\nsizes: 1100 1000 1000\n"
        "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: raw\ndata file: huge.raw\n"),
        "1,100,000,000 voxels", "more than")
    # Tiny noise: loads, but there is no head to cut into patches.
    put("noise.nii.gz", lambda p: ef.write_array(p, _noise((24, 24, 24))), "too little foreground")
    (folder / "no_dicom").mkdir()
    (folder / "no_dicom" / "readme.txt").write_text("nothing here\n")
    f["no_dicom"] = (folder / "no_dicom", ("without a DICOM series",))
    return f


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    return _make_bad_files(tmp_path_factory.mktemp("bad"))


BAD_NAMES = ["missing.nii.gz", "garbage.nii.gz", "notes.txt", "empty.nrrd", "truncated.nii", "truncated.nii.gz",
             "cut_stream.nii.gz", "truncated.mha", "truncated.nrrd", "flat.png",
             "flat.nii.gz", "series.nii.gz", "rgb.nrrd", "zeros.nii.gz", "constant.nii.gz", "nan.nrrd", "inf.mha",
             "one_slice.nii.gz", "one_row.nrrd", "two_columns.mha", "huge.nii", "huge.nhdr", "noise.nii.gz",
             "no_dicom"]


def check_one_line_error(stderr, words, code, expected_code=1):
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == expected_code, f"exit code {code}; stderr: {stderr!r}"
    assert "Traceback" not in stderr
    assert len(lines) == 1, f"expected a one-line error, got: {stderr!r}"
    assert lines[0].startswith("votemi"), lines[0]
    assert "error:" in lines[0]
    for word in words:
        assert word.lower() in lines[0].lower(), f"{word!r} missing from {lines[0]!r}"


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_file_gives_one_line_error(name, bad_files, capfd):
    path, words = bad_files[name]
    code = cli.main(["select", str(path)])
    captured = capfd.readouterr()  # file-descriptor level: catches ITK/GDCM warnings printed from C++ too
    assert captured.out == ""
    check_one_line_error(captured.err, words, code)


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n not in ("noise.nii.gz",)])
def test_load_volume_raises_volume_error(name, bad_files):
    path, words = bad_files[name]
    with pytest.raises(VolumeError) as error:
        load_volume(path)
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word.lower() in message.lower()


def test_huge_header_is_refused_without_reading_voxels(bad_files):
    # The file holds a header and no voxel data: a reader that went on to the voxels would fail with a
    # read error instead of naming the size.
    path, _ = bad_files["huge.nii"]
    assert os.path.getsize(path) == 352
    with pytest.raises(VolumeError, match="voxels"):
        load_volume(path)
    assert os.path.getsize(path.parent / "huge.raw") == 16
    with pytest.raises(VolumeError, match="voxels"):
        load_volume(path.parent / "huge.nhdr")


@pytest.mark.parametrize("argv, words", [
    (["--planes", "transverse"], ("--planes", "unknown plane 'transverse'")),
    (["--planes", ","], ("--planes", "no plane")),
    (["--slices-per-plane", "0"], ("--slices-per-plane", "at least 1")),
    (["--slices-per-plane", "-2"], ("--slices-per-plane", "at least 1")),
    (["--slices-per-plane", "three"], ("--slices-per-plane", "not a whole number")),
])
def test_bad_option_gives_one_line_error(argv, words, capfd):
    image = ef.cases()[ef.MAIN_CASE]["image"]
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["select", str(image), *argv])
    captured = capfd.readouterr()
    check_one_line_error(captured.err, words, exit_info.value.code, expected_code=2)


@pytest.mark.parametrize("args, words, expected", [
    (("select", "{missing.nii.gz}"), ("no such file",), 1),
    (("select", "{truncated.mha}"), ("not read completely",), 1),
    (("select", "{nan.nrrd}"), ("NaN",), 1),
    (("select", "{no_dicom}"), ("DICOM",), 1),
    (("select", "{zeros.nii.gz}", "--planes", "frontal"), ("unknown plane",), 2),
    (("bench", "{missing.nii.gz}"), ("no such folder",), 1),
])
def test_console_script_errors(args, words, expected, bad_files):
    argv = [str(bad_files[a[1:-1]][0]) if a.startswith("{") else a for a in args]
    run = ef.run_votemi(*argv)
    assert run.stdout == ""
    check_one_line_error(run.stderr, words, run.returncode, expected_code=expected)


@pytest.mark.parametrize("array, words", [
    (np.zeros((8, 8)), "2D"),
    (np.zeros((3, 8, 8, 8)), "4D"),
    (np.zeros((8, 8, 8, 3)), "4D or multi-component"),
    (np.zeros((8, 8, 8)), "all zero"),
    (np.full((8, 8, 8), -3.5), "constant"),
    (_with(_noise((8, 8, 8)), (1, 2, 3), np.nan), "NaN or infinite"),
    (_with(_noise((8, 8, 8)), (1, 2, 3), np.inf), "NaN or infinite"),
    (_noise((8, 2, 8)), "only 2 slice"),
    (_noise((8, 8, 8)).astype(np.complex64), "voxel type"),
    (np.array([[["a"] * 4] * 4] * 4), "voxel type"),
])
def test_volume_from_array_rejects(array, words):
    with pytest.raises(VolumeError, match=words.replace("(", r"\(")):
        volume_from_array(array, np.diag([-1.0, -1.0, 1.0, 1.0]), name="test")


def test_volume_from_array_rejects_bad_matrix_and_size(monkeypatch):
    good = _noise((8, 8, 8))
    with pytest.raises(VolumeError, match="IJK-to-RAS"):
        volume_from_array(good, np.zeros((4, 4)))
    with pytest.raises(VolumeError, match="IJK-to-RAS"):
        volume_from_array(good, np.full((4, 4), np.nan))
    # The size limit without allocating a billion voxels: lower it for this test.
    import VoteMILib.volumes as volumes

    monkeypatch.setattr(volumes, "MAX_VOXELS", 500)
    with pytest.raises(VolumeError, match="more than"):
        volumes.volume_from_array(good, np.eye(4))
    assert MAX_VOXELS == 1_000_000_000


def test_single_component_4d_array_is_accepted_as_3d():
    # (K, J, I, 1) is what some readers give for scalar volumes.
    volume = volume_from_array(_noise((8, 9, 10))[..., None], np.eye(4))
    assert volume.size_ijk == (10, 9, 8)
