"""Input files that are not what they claim (issue 33): names ITK cannot take, corrupt gzip, NaN/Inf in NIfTI.

Each case gets a one-line error naming the file and the problem, never an abort or a silent misreading.
Names that are not valid UTF-8 run in a child process: on the old code they aborted the interpreter.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys

import engine_fixtures as ef
import numpy as np
import pytest
from VoteMILib.volumes import VolumeError, load_volume

sitk = pytest.importorskip("SimpleITK")

LATIN1_NAME = b"caf\xe9.nii.gz"


def latin1_path(folder) -> str:
    """``folder``/caf\\xe9.nii.gz as Python names it (a surrogate escape); skips where the name cannot exist."""
    if sys.platform in ("win32", "darwin"):
        pytest.skip("file names there are always Unicode")
    path = os.path.join(os.fsencode(folder), LATIN1_NAME)
    try:
        with open(path, "wb"):
            pass
    except OSError as error:
        pytest.skip(f"cannot create a Latin-1 file name here: {error}")
    return os.fsdecode(path)


def phantom_nifti(path) -> None:
    ef.write_array(path, ef.head_phantom())


def float_nifti(values: np.ndarray, datatype=16) -> bytes:
    """A NIfTI-1 holding ``values`` (K, J, I) as float32 (datatype 16) or float64 (64), bytes as written."""
    dtype = "<f4" if datatype == 16 else "<f8"
    data = np.ascontiguousarray(values, dtype=dtype).tobytes()
    return ef.nifti1_bytes(tuple(reversed(values.shape)), datatype=datatype, bitpix=8 * np.dtype(dtype).itemsize,
                           data=data)


def one_line_error(run) -> str:
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(lines) == 1 and "Traceback" not in run.stderr, (run.returncode, run.stderr)
    return lines[0]


# -- names that are not valid UTF-8 ------------------------------------------------------------------


def test_select_on_a_latin1_file_name_is_a_one_line_error(tmp_path):
    path = latin1_path(tmp_path)
    phantom_nifti(tmp_path / "good.nii.gz")
    os.replace(tmp_path / "good.nii.gz", path)
    line = one_line_error(ef.run_votemi("select", path))
    assert "caf\\xe9.nii.gz" in line and "not valid UTF-8" in line and "rename" in line


def test_describe_on_a_latin1_file_name_is_a_one_line_error(tmp_path):
    path = latin1_path(tmp_path)
    phantom_nifti(tmp_path / "good.nii.gz")
    os.replace(tmp_path / "good.nii.gz", path)
    line = one_line_error(ef.run_votemi("describe", path, "--server", "http://127.0.0.1:9"))
    assert "caf\\xe9.nii.gz" in line and "not valid UTF-8" in line


def test_dicom_folder_holding_a_latin1_file_name_is_a_one_line_error(tmp_path):
    latin1_path(tmp_path)
    line = one_line_error(ef.run_votemi("select", tmp_path))
    assert "caf\\xe9.nii.gz" in line and "not valid UTF-8" in line


def test_batch_fails_the_latin1_case_and_goes_on(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copyfile(ef.cases()[ef.MAIN_CASE]["image"], inputs / "good.nii.gz")  # a real case: its picks succeed
    path = latin1_path(inputs)
    phantom_nifti(inputs / "other.nii.gz")
    os.replace(inputs / "other.nii.gz", path)
    run = ef.run_votemi("batch", inputs, "--out", tmp_path / "out", "--workers", "1")
    assert "Traceback" not in run.stderr and run.returncode in (0, 1), run.stderr
    records = {r["case"]: r for r in map(json.loads, (tmp_path / "out" / "summary.jsonl").read_text(encoding="utf-8").splitlines())}
    assert records["good"]["status"] == "ok"
    failed = [r for name, r in records.items() if name != "good"]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and "not valid UTF-8" in failed[0]["error"]


# -- corrupt and cut gzip --------------------------------------------------------------------------


def test_nifti_gz_with_one_flipped_byte_is_refused_as_corrupt(tmp_path):
    path = tmp_path / "flipped.nii.gz"
    phantom_nifti(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the deflate stream: ITK would decode garbage without a word
    path.write_bytes(bytes(data))
    with pytest.raises(VolumeError, match=r"flipped\.nii\.gz is corrupt: .*copy the file again") as error:
        load_volume(path)  # named by its file: a batch's log must say which file to copy again
    assert "\n" not in str(error.value)


def test_nifti_gz_cut_inside_its_header_says_truncated(tmp_path):
    path = tmp_path / "cut.nii.gz"
    whole = gzip.compress(float_nifti(ef.head_phantom((8, 8, 8))))
    path.write_bytes(whole[:40])  # a few header bytes decompress, then the stream ends
    with pytest.raises(VolumeError, match=r"^cut is truncated: the file ends inside its NIfTI header"):
        load_volume(path)


def test_plain_nifti_named_gz_is_still_read(tmp_path):
    path = tmp_path / "plain.nii.gz"
    path.write_bytes(float_nifti(ef.head_phantom((8, 8, 8))))
    assert load_volume(path).size_ijk == (8, 8, 8)


# -- NaN and Inf in NIfTI -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, datatype, value", [(".nii", 16, np.nan), (".nii.gz", 16, np.inf),
                                                     (".nii.gz", 64, -np.inf), (".nii", 64, np.nan)])
def test_nonfinite_nifti_voxels_give_the_nrrd_error(tmp_path, suffix, datatype, value):
    values = ef.head_phantom((10, 12, 11))
    values[3, 4, 5] = values[7, 1, 2] = value
    raw = float_nifti(values, datatype)
    path = tmp_path / f"bad{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix.endswith(".gz") else raw)
    with pytest.raises(VolumeError, match=r"^bad has 2 NaN or infinite voxels; fix or mask them"):
        load_volume(path)


def test_all_nan_nifti_is_not_called_all_zero(tmp_path):
    path = tmp_path / "nan.nii.gz"
    path.write_bytes(gzip.compress(float_nifti(np.full((6, 7, 8), np.nan, np.float32))))
    with pytest.raises(VolumeError, match=r"has 336 NaN or infinite voxels"):
        load_volume(path)


def test_finite_voxels_and_bytes_past_the_data_are_accepted(tmp_path):
    values = ef.head_phantom((10, 12, 11))
    path = tmp_path / "tail.nii"
    path.write_bytes(float_nifti(values) + np.full(4, np.nan, "<f4").tobytes())  # not voxels: after the data
    np.testing.assert_array_equal(load_volume(path).array, values)


# -- outputs that are not regular files ------------------------------------------------------------


def test_output_through_a_symlink_writes_its_target(tmp_path):
    from VoteMILib.outputs import check_output_file, write_atomic

    if not hasattr(os, "symlink"):
        pytest.skip("no symbolic links here")
    target = tmp_path / "kept" / "selection.json"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.json"
    try:
        os.symlink(target, link)
    except OSError as error:
        pytest.skip(f"cannot make a symbolic link: {error}")
    assert check_output_file(link) == str(link)
    assert write_atomic(link, "new\n") == str(link)
    assert os.path.islink(link) and target.read_text(encoding="utf-8") == "new\n"
    assert sorted(os.listdir(tmp_path)) == ["kept", "link.json"]  # no temporary left beside the link


def test_output_that_is_a_fifo_is_refused_and_kept(tmp_path):
    import stat

    from VoteMILib.outputs import OutputError, check_output_file, write_atomic

    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    fifo = tmp_path / "pipe.json"
    os.mkfifo(fifo)
    for attempt in (lambda: check_output_file(fifo, "JSON file"), lambda: write_atomic(fifo, "{}", "JSON file")):
        with pytest.raises(OutputError, match=r"^cannot write JSON file .*pipe\.json: it is a FIFO \(named pipe\), "
                                              r"not a regular file"):
            attempt()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode) and os.listdir(tmp_path) == ["pipe.json"]


def test_output_that_is_a_device_is_refused_before_any_work():
    from VoteMILib.outputs import OutputError, check_output_file

    if not os.path.exists("/dev/null"):
        pytest.skip("no /dev/null here")
    with pytest.raises(OutputError, match="it is a character device, not a regular file"):
        check_output_file("/dev/null")


# -- ITK errors whose own words mislead ----------------------------------------------------------------


def test_singular_direction_matrix_is_named(tmp_path):
    (tmp_path / "flat.raw").write_bytes(ef.head_phantom((20, 24, 22)).astype("<i2").tobytes())
    (tmp_path / "flat.mhd").write_text("ObjectType = Image\nNDims = 3\nDimSize = 22 24 20\nElementType = MET_SHORT\n"
                                       "ElementSpacing = 2 2 2\nTransformMatrix = 1 0 0 1 0 0 0 0 1\n"
                                       "ElementDataFile = flat.raw\n")
    with pytest.raises(VolumeError, match=r"flat\.mhd: its direction matrix is singular .*fix the orientation"):
        load_volume(tmp_path / "flat.mhd")


def test_dicom_slice_of_another_size_is_named_with_both_sizes(tmp_path):
    image = sitk.GetImageFromArray(ef.head_phantom((12, 48, 44)).astype(np.int16))
    ef.write_dicom_series(image, tmp_path / "series")
    other = sitk.GetImageFromArray(ef.head_phantom((12, 101, 99)).astype(np.int16))
    ef.write_dicom_series(other, tmp_path / "other", slices=[5])
    shutil.copyfile(tmp_path / "other" / "slice000.dcm", tmp_path / "series" / "slice005.dcm")
    with pytest.raises(VolumeError, match=r"its slice slice005\.dcm is 99x101 pixels, the series' others 44x48 "
                                          r"\(from slice000\.dcm\).*move that file out of the folder"):
        load_volume(tmp_path / "series")
