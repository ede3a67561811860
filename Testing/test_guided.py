"""Guided selection (``VoteMILib.guided``, ``votemi select|describe --mask/--point``): the slices of what the user
segmented or marked, on every masked real case; combined with unsupervised picks; and every bad guide refused in
one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

import engine_fixtures as ef
from VoteMILib import cli, synthetic
from VoteMILib.bench import score_slice, section_areas
from VoteMILib.datasets import find_cases, load_mask
from VoteMILib.geometry import NORMAL_INDEX, PLANES
from VoteMILib.guided import GuideError, guided_selection, load_label_map, make_guide, select_guided
from VoteMILib.volumes import load_volume, volume_from_array

sitk = pytest.importorskip("SimpleITK")

MASKED = [case for folder in (ef.DATA, ef.DATA / "sarcoma") for case in find_cases(folder) if case.mask]


def lesion_centre_ras(volume, lesion_kji) -> tuple:
    """The lesion voxel nearest the lesion's centroid, in RAS (a centroid may fall outside a crescent)."""
    voxels = np.argwhere(lesion_kji)
    nearest = voxels[int(np.argmin(((voxels - voxels.mean(axis=0)) ** 2).sum(axis=1)))]
    ijk = nearest[::-1].astype(float)
    return tuple(volume.ijk_to_ras[:3, :3] @ ijk + volume.ijk_to_ras[:3, 3])


def half_slice_mm(plane_result) -> float:
    return 0.5 * abs(plane_result.positions_mm[1] - plane_result.positions_mm[0]) + 1e-3


@pytest.mark.parametrize("case", MASKED, ids=[case.name for case in MASKED])
def test_own_mask_and_lesion_centre_guide_every_plane(case):
    """``--mask`` of the case's own mask: the top slice of every plane holds at least half of the lesion's
    largest section (the bench's hit_half), its mark inside the lesion. ``--point`` at the lesion's centre:
    every plane's pick passes through the point, marked on it, and shows the lesion."""
    volume = load_volume(case.image)
    lesion = load_mask(case.mask, volume)
    guide = make_guide(volume, load_label_map(case.mask, volume), source="mask")
    result = guided_selection(volume, guide, top_k=3)
    point = lesion_centre_ras(volume, lesion)
    by_point = guided_selection(volume, make_guide(volume, points=[point]), top_k=3)
    for plane in PLANES:
        chosen = result.planes[plane]
        areas = section_areas(volume, lesion, plane)
        top = chosen.selected[0]
        assert score_slice(top.index, areas, chosen.positions_mm)["hit_half"] == 1.0, (plane, top)
        assert chosen.cue == "segmentation" and top.guide["kind"] == "segmentation"
        ijk = np.round(np.linalg.solve(volume.ijk_to_ras[:3, :3], np.subtract(top.focus_ras, volume.ijk_to_ras[:3, 3])))
        assert lesion[int(ijk[2]), int(ijk[1]), int(ijk[0])], (plane, top.focus_ras)
        assert len({pick.index for pick in chosen.selected}) == len(chosen.selected) == 3
        through = by_point.planes[plane].selected
        assert len(through) == 1 and through[0].guide == {"kind": "point", "name": "point 1",
                                                          "phrase": "the marked point", "point": 1,
                                                          "ras": [round(c, 3) for c in point]}
        assert abs(through[0].position_mm - point[NORMAL_INDEX[plane]]) <= half_slice_mm(chosen)
        assert through[0].focus_ras == pytest.approx(point)
        assert areas[through[0].index] > 0


def test_distinct_segments_first_then_the_biggest_again():
    """tcga_fg_6692 has three labels: each plane shows each label's largest section once, biggest first; with
    more picks, further sections of the biggest follow; ``--labels`` keeps the order given."""
    volume = ef.volume("tcga_fg_6692")
    labels = load_label_map(ef.cases()["tcga_fg_6692"]["mask"], volume)
    sizes = {value: int((labels == value).sum()) for value in (1, 2, 4)}
    biggest_first = sorted(sizes, key=lambda value: -sizes[value])
    result = guided_selection(volume, make_guide(volume, labels), top_k=5)
    chosen = guided_selection(volume, make_guide(volume, labels, labels=[4, 1], names={4: "enhancing"}), top_k=2)
    for plane in PLANES:
        picks = result.planes[plane].selected
        assert [pick.guide["label"] for pick in picks[:3]] == biggest_first
        assert [pick.guide["label"] for pick in picks[3:]] == [biggest_first[0]] * 2
        positions = result.planes[plane].positions_mm
        for number, pick in enumerate(picks[:3]):
            areas = section_areas(volume, labels == pick.guide["label"], plane)
            if areas[pick.index] < areas.max():  # only when its largest section is (near) an earlier pick's slice
                largest = positions[np.flatnonzero(areas == areas.max())]
                assert any(min(abs(largest - earlier.position_mm)) < 10.0 for earlier in picks[:number]), pick
        assert [(pick.guide["label"], pick.guide["name"]) for pick in chosen.planes[plane].selected] == [
            (4, "enhancing"), (1, "label 1")]


def test_a_mask_on_another_grid_is_resampled_nearest_neighbour(tmp_path):
    """The case's mask written at half resolution with other axes: read back on the image grid, labels intact,
    and the top slices still hit."""
    case = ef.cases()["pyradiomics_brain1"]
    volume = ef.volume("pyradiomics_brain1")
    mask = sitk.ReadImage(str(case["mask"]))
    coarse = sitk.Resample(mask, [n // 2 for n in mask.GetSize()[:2]] + [mask.GetSize()[2]], sitk.Transform(),
                           sitk.sitkNearestNeighbor, mask.GetOrigin(),
                           [mask.GetSpacing()[0] * 2, mask.GetSpacing()[1] * 2, mask.GetSpacing()[2]],
                           mask.GetDirection(), 0, mask.GetPixelID())
    coarse = sitk.DICOMOrient(coarse, "RAI")
    path = tmp_path / "coarse.nrrd"
    sitk.WriteImage(coarse, str(path))
    labels = load_label_map(path, volume)
    lesion = load_mask(case["mask"], volume)
    assert labels.shape == volume.array.shape and set(np.unique(labels)) == {0, 1}
    assert 2 * (lesion & (labels > 0)).sum() / (lesion.sum() + (labels > 0).sum()) > 0.85
    result = guided_selection(volume, make_guide(volume, labels))
    for plane in PLANES:
        areas = section_areas(volume, lesion, plane)
        assert score_slice(result.planes[plane].selected[0].index, areas, result.planes[plane].positions_mm)[
            "hit_half"] == 1.0


def test_rtstruct_is_read_through_the_dicom_input():
    """The real RTSTRUCT of sts001_ct, rasterised on its DICOM series, matches the curators' NIfTI mask and names
    its structure."""
    folder = ef.DATA / "dicom" / "sts001_ct"
    volume = load_volume(folder / "series")
    labels = load_label_map(folder / "rtstruct.dcm", volume)
    reference = load_mask(ef.DATA / "sarcoma" / "sts001_ct" / "mask.nii.gz",
                          load_volume(ef.DATA / "sarcoma" / "sts001_ct" / "image.nii.gz"))
    assert labels.shape == reference.shape
    assert 2 * ((labels > 0) & reference).sum() / ((labels > 0).sum() + reference.sum()) > 0.95
    from VoteMILib.dicom_guides import rtstruct_names

    assert rtstruct_names(folder / "rtstruct.dcm") == {1: "GTV_Mass_CT"}


def test_dicom_modality_reads_the_same_with_pydicom_and_simpleitk(tmp_path):
    """Without pydicom the modality of a DICOM image is read by SimpleITK (``volumes.dicom_tag``, which reads
    headers of files that hold pixels): the same value."""
    pytest.importorskip("pydicom")
    from VoteMILib.dicom_guides import dicom_modality
    from VoteMILib.volumes import dicom_tag

    first_slice = str(sorted((ef.DATA / "dicom" / "sts001_ct" / "series").iterdir())[0])
    assert dicom_modality(first_slice) == dicom_tag(first_slice, "0008|0060") == "CT"
    (tmp_path / "notes.txt").write_text("not a DICOM file")
    assert dicom_modality(str(tmp_path / "notes.txt")) == dicom_tag(str(tmp_path / "notes.txt"), "0008|0060") == ""


def two_lesion_scan():
    """mirp_sts002_ct with its real sarcoma kept and a 30 mm enhancing mass put into the fat elsewhere by the
    seeded rule of the synthetic benchmark: (volume, real lesion, synthetic sphere)."""
    from VoteMILib.preprocess import make_working_grid
    from VoteMILib.cues import detect_region
    from VoteMILib.modality import detect_modality

    case = ef.cases()["mirp_sts002_ct"]
    volume = ef.volume("mirp_sts002_ct")
    lesion = load_mask(case["mask"], volume)
    grid = make_working_grid(volume)
    assert detect_region(grid, detect_modality(volume)).modality == "CT"
    radius = 15.0
    sites = synthetic.sites_for("tissue", grid, radius, synthetic.site_rng(0, "mirp_sts002_ct", "tissue", radius),
                                synthetic.working_mask(grid, volume, lesion))
    site = next(site for site in sites if site.name == "fat 2")
    value, noise, write_below = synthetic.lesion_value("tissue", volume)
    voxels = volume.array.copy()
    sphere = synthetic.insert_sphere(voxels, volume.ijk_to_ras, site, value, noise, np.random.default_rng(0),
                                     write_below)
    assert not (sphere & lesion).any()
    return volume_from_array(voxels, volume.ijk_to_ras, name="two lesions"), lesion, sphere


def test_combined_mode_adds_the_second_lesion_outside_the_guided_one():
    """Guided by the real sarcoma's mask in findings mode: each plane's guided picks show the sarcoma, then one
    unsupervised pick shows the synthetic mass that nobody segmented, its mark on it."""
    volume, lesion, sphere = two_lesion_scan()
    guide = make_guide(volume, lesion.astype(np.int32), source="mask")
    result = select_guided(volume, guide, top_k=2, mode="findings")
    assert result.settings["mode"] == "guided+findings"
    assert result.selection_mode() == "guided by the segment 'label 1', then findings"
    for plane in PLANES:
        chosen = result.planes[plane]
        guided, extra = chosen.selected[:2], chosen.selected[2]
        lesion_areas, sphere_areas = section_areas(volume, lesion, plane), section_areas(volume, sphere, plane)
        assert [pick.rank for pick in chosen.selected] == [1, 2, 3]
        assert all(lesion_areas[pick.index] > 0 and pick.guide["kind"] == "segmentation" for pick in guided)
        assert extra.guide["kind"] == "unsupervised" and extra.guide["cue"] == "tissue_contrast"
        assert score_slice(extra.index, sphere_areas, chosen.positions_mm)["hit_half"] == 1.0, plane
        ijk = np.round(np.linalg.solve(volume.ijk_to_ras[:3, :3], np.subtract(extra.focus_ras, volume.ijk_to_ras[:3, 3])))
        assert sphere[int(ijk[2]), int(ijk[1]), int(ijk[0])], plane


def test_select_json_and_events_name_the_guide(tmp_path):
    """``votemi select --mask --json`` and ``--point --events`` in a real child process: the plane's cue, each
    pick's label or point, and "guided by" in the settings."""
    case = ef.cases()["pyradiomics_brain2"]
    out = tmp_path / "guided.json"
    run = ef.run_votemi("select", case["image"], "--mask", case["mask"], "--label-name", "1=tumour", "--json", out,
                        "--slices-per-plane", "2")
    assert run.returncode == 0, run.stderr
    assert "segmentation: tumour" in run.stdout and "guided by the segment 'tumour'" in run.stdout
    document = json.loads(out.read_text(encoding="utf-8"))
    assert document["settings"]["guided_by"] == "the segment 'tumour'"
    for plane in PLANES:
        assert document["planes"][plane]["cue"] == "segmentation"
        assert [pick["guide"]["label"] for pick in document["planes"][plane]["selected"]] == [1, 1]
    volume = ef.volume("pyradiomics_brain2")
    point = lesion_centre_ras(volume, load_mask(case["mask"], volume))
    run = ef.run_votemi("select", case["image"], f"--point={point[0]:.3f},{point[1]:.3f},{point[2]:.3f}", "--events")
    assert run.returncode == 0, run.stderr
    events = [json.loads(line) for line in run.stdout.splitlines()]
    selection = next(event["selection"] for event in events if event["event"] == "selection")
    for plane in PLANES:
        assert selection["planes"][plane]["cue"] == "point"
        assert selection["planes"][plane]["selected"][0]["guide"]["kind"] == "point"
    assert events[-1] == {"event": "done", "exit_code": 0}


def test_describe_prompt_names_the_guided_structure(tmp_path):
    """The prompt says what the slices were chosen to show, and each image's label what it shows."""
    case = ef.cases()["pyradiomics_brain2"]
    volume = ef.volume("pyradiomics_brain2")
    point = lesion_centre_ras(volume, load_mask(case["mask"], volume))
    run = ef.run_votemi("describe", case["image"], "--mask", case["mask"], "--label-name", "1=lung nodule 1",
                        "--slices-per-plane", "1", "--dry-run", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "chosen to show the segment 'lung nodule 1'" in run.stdout
    assert "A1: axial" in run.stdout and "showing the segment 'lung nodule 1'" in run.stdout
    run = ef.run_votemi("describe", case["image"], f"--point={point[0]:.3f},{point[1]:.3f},{point[2]:.3f}",
                        "--dry-run", "--quiet")
    assert run.returncode == 0, run.stderr
    assert "chosen to show the marked point;" in run.stdout and "showing the marked point" in run.stdout


def _write_like(path, array_kji, volume):
    from VoteMILib.guided import reference_image

    image = sitk.GetImageFromArray(np.ascontiguousarray(array_kji))
    image.CopyInformation(reference_image(volume))
    sitk.WriteImage(image, str(path))
    return path


def _error_line(capsys, argv) -> str:
    assert cli.main(argv) == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("votemi: error: "), lines
    assert "Traceback" not in lines[0]
    return lines[0]


def test_bad_guides_end_with_one_line(tmp_path, capsys):
    """An empty mask, a label that is not there, a mask outside the body (another patient's), a mask of another
    scan's field of view, a probability map, a DICOM SEG, a point outside the volume, --labels without --mask."""
    case = ef.cases()["pyradiomics_brain2"]
    image = str(case["image"])
    volume = ef.volume("pyradiomics_brain2")
    empty = _write_like(tmp_path / "empty.nii.gz", np.zeros(volume.array.shape, np.uint8), volume)
    air = np.zeros(volume.array.shape, np.uint8)
    air[10:14, 2:8, 2:8] = 1  # a corner of the field of view, outside the head
    outside_body = _write_like(tmp_path / "air.nii.gz", air, volume)
    fraction = _write_like(tmp_path / "probability.nii.gz", (load_mask(case["mask"], volume) * 0.7).astype(np.float32),
                           volume)
    seg = tmp_path / "seg.dcm"
    _write_dicom_seg(seg)
    sarcoma_mask = str(ef.DATA / "sarcoma" / "sts002_ct" / "mask.nii.gz")
    expected = {
        ("--mask", str(empty)): "empty.nii.gz is empty",
        ("--mask", str(case["mask"]), "--labels", "1,7"): "holds no label 7; it holds 1",
        ("--mask", str(outside_body)): "does not overlap the body",
        ("--mask", sarcoma_mask): "lies outside the field of view",
        ("--mask", str(fraction)): "fractional values",
        ("--mask", str(seg)): "DICOM SEG",
        ("--point=0,0,9999",): "lies outside image",
        ("--labels", "2"): "give --mask",
        ("--mask", str(tmp_path / "missing.nii.gz")): "no such mask file",
    }
    for argv, words in expected.items():
        line = _error_line(capsys, ["select", image, *argv])
        assert words in line, (argv, line)
    assert "plastimatch convert" in _error_line(capsys, ["select", image, "--mask", str(seg)])
    with pytest.raises(SystemExit) as usage:
        cli.main(["select", image, "--point", "1,2"])
    assert usage.value.code == 2 and "is not a point R,A,S" in capsys.readouterr().err
    with pytest.raises(GuideError, match="label 0 is the background"):
        make_guide(volume, load_label_map(case["mask"], volume), labels=[0])


def _write_dicom_seg(path):
    """A minimal DICOM file whose Modality is SEG (enough for VoteMI to recognise one)."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    dataset.Modality = "SEG"
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.save_as(str(path), enforce_file_format=True)
    assert pydicom.dcmread(str(path)).Modality == "SEG"
