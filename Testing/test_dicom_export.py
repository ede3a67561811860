"""``votemi describe --dicom-out`` on the real DICOM series of ../shared/data/dicom (real UIDs).

Every object written is read back with pydicom and highdicom, every reference must resolve to a
source SOP Instance or a derived image written beside it, and Debian's independent validators
(dicom3tools' ``dciodvfy``, dcmtk's ``dcmdump`` and ``dsrdump``) must report no error.
"""

import glob
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vlm_fixtures import ScriptedServer, complete_json

# The real source files hold a Study ID longer than its VR allows; pydicom says so whenever it reads them.
pytestmark = pytest.mark.filterwarnings("ignore:The value length")
pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")

DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "dicom")
ANSWER = """Findings:
- Soft-tissue mass in the thigh [A1, C1].
- Possible second lesion [S1, Z9].
Impression: Soft-tissue mass [A1, S1]."""


def _series(name):
    folder = os.path.join(DATA, name, "series")
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} is missing")
    return folder


def _describe(folder, out, *more):
    with ScriptedServer() as server:
        server.script.append(complete_json(ANSWER))
        return subprocess.run([sys.executable, "-m", "VoteMILib.cli", "describe", folder, "--server", server.url,
                               "--slices-per-plane", "1", "--long-side", "128", "--no-stream", "--quiet", *more],
                              capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module", params=["sts001_ct", "sts001_mr_t1"])
def exported(request, tmp_path_factory):
    folder = _series(request.param)
    out = tmp_path_factory.mktemp(request.param)
    done = _describe(folder, out, "--dicom-out", str(out / "dicom"), "--json", str(out / "report.json"),
                     "--png-dir", str(out / "png"))
    assert done.returncode == 0, done.stderr
    document = json.loads((out / "report.json").read_text(encoding="utf-8"))
    sources = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.dcm"))):
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
        sources[dataset.SOPInstanceUID] = dataset
    written = {path: pydicom.dcmread(path) for path in document["dicom_export"]["files"]}
    return {"document": document, "sources": sources, "written": written, "stderr": done.stderr, "folder": folder}


def _referenced_uids(node):
    """Every ReferencedSOPInstanceUID anywhere in a dataset."""
    found = []
    for element in node:
        if element.keyword == "ReferencedSOPInstanceUID":
            found.append(str(element.value))
        elif element.VR == "SQ":
            for item in element.value:
                found += _referenced_uids(item)
    return found


def _by_modality(written, modality):
    return [ds for ds in written.values() if ds.Modality == modality]


def test_objects_are_new_series_in_the_source_study(exported):
    source = next(iter(exported["sources"].values()))
    written = list(exported["written"].values())
    assert {ds.Modality for ds in written} == {"KO", "SR", "OT"}  # OT: the secondary captures
    uids = [ds.SOPInstanceUID for ds in written]
    assert len(set(uids)) == len(uids) and not set(uids) & set(exported["sources"])
    assert source.SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in written}
    assert len({ds.SeriesInstanceUID for ds in written}) == 3  # SC, KOS and SR each in a series of its own
    for ds in written:
        for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "PatientBirthDate", "PatientSex",
                        "StudyDate", "StudyTime", "AccessionNumber", "ReferringPhysicianName"):
            assert str(ds.get(keyword, "")) == str(source.get(keyword, "")), keyword
        assert ds.StudyID == source.StudyID[:16]  # the source's over-long Study ID is cut to the VR's 16
    assert "Study ID" in exported["stderr"] and "written as" in exported["stderr"]


def test_every_reference_resolves_to_a_source_or_a_written_image(exported):
    known = set(exported["sources"]) | {ds.SOPInstanceUID for ds in exported["written"].values()}
    kos, = _by_modality(exported["written"], "KO")
    sr, = _by_modality(exported["written"], "SR")
    for document in (kos, sr):
        references = _referenced_uids(document)
        assert references and set(references) <= known
    derived = _by_modality(exported["written"], "OT")
    for image in derived:
        assert {item.ReferencedSOPInstanceUID for item in image.SourceImageSequence} == set(exported["sources"])
    references = exported["document"]["dicom_export"]["references"]
    images = {image["id"]: image for image in exported["document"]["report_meta"]["images"]}
    kos_items = {item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for item in kos.ContentSequence
                 if item.ValueType == "IMAGE"}
    assert kos_items == {reference["sop_instance_uid"] for reference in references.values()}
    for image_id, reference in references.items():
        if reference["kind"] == "source":  # an acquired slice: the very file at the voted position
            source = exported["sources"][reference["sop_instance_uid"]]
            position = np.array([float(v) for v in source.ImagePositionPatient]) * [-1, -1, 1]
            normal = np.cross(*np.reshape([float(v) for v in source.ImageOrientationPatient], (2, 3))) * [-1, -1, 1]
            assert abs(float((position - images[image_id]["center_ras"]) @ normal)) < 0.01
        else:
            assert reference["sop_instance_uid"] in {ds.SOPInstanceUID for ds in derived}
    kinds = {image_id[0]: reference["kind"] for image_id, reference in references.items()}
    assert kinds == {"A": "source", "C": "derived", "S": "derived"}  # both series are axial acquisitions


def test_secondary_captures_hold_the_rendered_slices(exported):
    from PIL import Image

    pngs = {os.path.basename(path).split("_")[1]: path for path in exported["document"]["pngs"]}
    for path, dataset in exported["written"].items():
        if dataset.Modality != "OT":
            continue
        image = hd.imread(path)
        image_id = os.path.basename(path).split("_")[1]
        sent = np.asarray(Image.open(pngs[image_id]).convert("RGB"))
        assert np.array_equal(image.pixel_array, sent)
        assert list(dataset.ImageType) == ["DERIVED", "SECONDARY"] and "AI-generated draft" in dataset.ImageComments


def test_structured_report_content_and_review(exported):
    sr_path = exported["document"]["dicom_export"]["sr"]
    report = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(sr_path))
    assert report.VerificationFlag == "UNVERIFIED" and report.CompletionFlag == "COMPLETE"
    texts = []

    def walk(items, depth=0):
        for item in items:
            texts.append((depth, item.ConceptNameCodeSequence[0].CodeMeaning, getattr(item, "TextValue", None),
                          item.ValueType))
            walk(getattr(item, "ContentSequence", []), depth + 1)

    walk(report.ContentSequence)
    values = [t for _, _, t, _ in texts if t]
    assert any(v.startswith("AI-generated draft, not for diagnostic use") for v in values)
    assert "Soft-tissue mass in the thigh." in values and "Soft-tissue mass." in values
    assert values.count("Review: pending (not reviewed)") == 3
    assert any("Z9, not among the images sent" in v for v in values)
    meanings = [m for _, m, _, _ in texts]
    assert meanings.count("Best illustration of finding") == 5 and "Impressions" in meanings  # Z9 has none


def test_structured_report_says_what_stood_out_in_each_plane(exported):
    from VoteMILib.results import outcome_text

    sr = pydicom.dcmread(exported["document"]["dicom_export"]["sr"])
    texts = [str(getattr(item, "TextValue", "")) for item in sr.ContentSequence]
    said = [text for text in texts if text.startswith("Selection")]
    planes = {plane: {key: data[key] for key in ("cue", "stood_out", "confidence")}
              for plane, data in exported["document"]["planes"].items()}
    assert said == [f"Selection, {plane} plane: {outcome_text(outcome)}" for plane, outcome in planes.items()]
    assert len(said) == 3


def test_a_reviewed_report_is_verified_by_its_reviewer(exported, tmp_path):
    from VoteMILib.dicom_export import export_dicom
    from VoteMILib.vlm import Report
    from VoteMILib.volumes import load_volume

    report = Report.from_dict(exported["document"])
    for n in range(len(report.findings.items)):
        report.findings.accept(n, "Reader^Anna")
    report.findings.reject(1, "Reader^Anna")
    volume = load_volume(exported["folder"])
    written = export_dicom(volume, report, {}, str(tmp_path))
    assert written.derived == [] and len(written.skipped) == 2  # no rendered images given: only acquired slices
    sr = pydicom.dcmread(written.sr)
    assert sr.VerificationFlag == "VERIFIED" and str(sr.VerifyingObserverSequence[0].VerifyingObserverName) == \
        "Reader^Anna"
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert any(t.startswith("Review: rejected by Reader^Anna") for t in texts)


def _run(tool, *arguments):
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install dcmtk dicom3tools)")
    return subprocess.run([path, *arguments], capture_output=True, text=True, timeout=60)


def _errors(done) -> list:
    """dcmtk's error lines ("E: ..."); its warnings ("W: ...") say what it does not check."""
    return [line for line in (done.stdout + done.stderr).splitlines() if line.startswith(("E:", "F:"))]


def test_dciodvfy_finds_no_error(exported):
    for path in exported["written"]:
        done = _run("dciodvfy", path)
        errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
        assert not errors, (path, errors)


def test_dcmdump_and_dsrdump_read_everything_without_error(exported):
    for path, dataset in exported["written"].items():
        done = _run("dcmdump", "-E", path)
        assert done.returncode == 0 and not _errors(done), (path, done.stderr)
        if dataset.Modality in ("SR", "KO"):
            done = _run("dsrdump", "-Ec", path)  # -Ec: also check the SR tree's relationships and value types
            assert done.returncode == 0 and not _errors(done), (path, done.stderr)
            assert "Best illustration of finding" in done.stdout or dataset.Modality == "KO"


def test_nifti_input_says_why_no_dicom_is_written(image_path, tmp_path):
    done = _describe(image_path, tmp_path, "--dicom-out", str(tmp_path / "dicom"))
    assert done.returncode == 1 and not (tmp_path / "dicom").exists()
    line, = [line for line in done.stderr.splitlines() if line.startswith("votemi: error:")]
    assert "needs a DICOM series as input" in line and "no patient, study or source instance" in line
