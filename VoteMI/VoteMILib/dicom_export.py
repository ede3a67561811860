"""The report as DICOM objects in the source study: key images (KOS), derived images (SC) and a structured report.

For a volume read from a DICOM series, :func:`export_dicom` writes, each in a new series with new
UIDs and the source's patient and study modules:

* a **Secondary Capture** image of every voted slice of a reformatted plane (as rendered for the
  model), derived from the source series;
* a **Key Object Selection** document ("Of Interest") referencing the source instance of every
  voted slice of the acquisition plane, and the Secondary Captures;
* a **Comprehensive SR** with the content of TID 2000 (Basic Diagnostic Imaging Report; highdicom
  has no TID 2000 template): Findings and Impressions containers whose text items reference their
  images ("Best illustration of finding") and carry their review state, the AI-generated notice,
  the device (VoteMI and the model) and the reviewer as observers.

Needs pydicom and highdicom (``pip install 'votemi[dicom]'``).
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np

from . import __version__

#: Series numbers of the new series (far above those scanners use for their own series).
SERIES_NUMBERS = {"sc": 9901, "ko": 9902, "sr": 9903}
MANUFACTURER = "VoteMI"
_DEVICE_UID_ROOT = "2.25."
# How the panel and the PNGs show each plane: the patient direction along the image's rows and columns.
_ORIENTATION = {"axial": ("L", "P"), "coronal": ("L", "F"), "sagittal": ("P", "F")}
_RAS_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}


class DicomExportError(ValueError):
    """Why no DICOM could be written, in one line."""


@dataclass
class DicomExport:
    """What :func:`export_dicom` wrote.

    Attributes
    ----------
    files : list of str
        Every file written (SC images, then the KOS, then the SR).
    references : dict
        Image ID -> ``{"kind": "source"|"derived", "sop_class_uid", "sop_instance_uid", "file"}``.
    skipped : list of str
        Image IDs not exported (sequences other than the DICOM series) with the reason.
    kos, sr, derived : the files of the KOS, the SR and the SC images.
    notes : list of str
        Source values changed to be valid in the copies (one line each).
    """

    files: list = field(default_factory=list)
    references: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    kos: str = ""
    sr: str = ""
    derived: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"files": list(self.files), "kos": self.kos, "sr": self.sr, "derived": list(self.derived),
                "references": dict(self.references), "skipped": list(self.skipped), "notes": list(self.notes)}


def why_no_dicom(volume) -> str:
    """Empty if ``volume`` came from a DICOM series, else the one-line reason no DICOM can be written."""
    if volume.metadata.get("dicom_files"):
        return ""
    source = volume.path or volume.name or "the input"
    return (f"--dicom-out needs a DICOM series as input: {source} is not DICOM, so there is no patient, study or "
            "source instance for key images and a report to belong to; load the DICOM folder instead")


def _import():
    try:
        import highdicom
        import pydicom
    except ImportError:
        raise DicomExportError("DICOM export needs pydicom and highdicom: pip install 'votemi[dicom]'") from None
    return pydicom, highdicom


def _read_sources(pydicom, files, notes):
    """The source datasets without pixels; over-long copied values are fitted (see :func:`_fit_lengths`)."""
    datasets = []
    for path in files:
        try:
            dataset = pydicom.dcmread(path, stop_before_pixels=True)
        except (OSError, pydicom.errors.InvalidDicomError) as error:
            raise DicomExportError(f"cannot read the source DICOM file {path}: {error}") from None
        _fit_lengths(dataset, notes)
        datasets.append(dataset)
    return datasets


#: Longest value of the string VRs whose length a copied value may exceed in real files.
_MAX_LENGTH = {"SH": 16, "LO": 64, "CS": 16, "AE": 16}


def _fit_lengths(dataset, notes):
    """Cut top-level values longer than their VR allows (the copies must be valid DICOM); say so once each.

    Only the in-memory copy changes, never a source file; identity lives in the UIDs, which are untouched.
    """
    for element in dataset:
        limit = _MAX_LENGTH.get(element.VR)
        if limit is None or element.value is None or element.VM != 1 or not isinstance(element.value, str):
            continue
        if len(element.value) > limit:
            note = (f"source {element.name} '{element.value}' is {len(element.value)} characters, more than DICOM "
                    f"allows ({limit}); written as '{element.value[:limit]}'")
            if note not in notes:
                notes.append(note)
            element.value = element.value[:limit]


def _ras_position(dataset) -> np.ndarray:
    return np.array([float(v) for v in dataset.ImagePositionPatient]) * np.array([-1.0, -1.0, 1.0])


def _slice_normal_ras(dataset) -> np.ndarray:
    orientation = np.array([float(v) for v in dataset.ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:]) * np.array([-1.0, -1.0, 1.0])
    return normal / np.linalg.norm(normal)


def _acquired_slice(image: dict, sources, spacing: float):
    """Index of the source dataset that *is* this voted slice (acquisition plane, same position), or None."""
    if "center_ras" not in image or not hasattr(sources[0], "ImageOrientationPatient"):
        return None
    normal = _slice_normal_ras(sources[0])
    axis = _RAS_AXIS[image["plane"]]
    if int(np.argmax(np.abs(normal))) != axis:
        return None  # a reformatted plane: no acquired image lies in it
    centre = np.asarray(image["center_ras"], dtype=float)
    distances = [abs(float((_ras_position(ds) - centre) @ normal)) for ds in sources]
    best = int(np.argmin(distances))
    # An interpolated slice (uneven source spacing) matches no file: it is exported as a derived image.
    return best if distances[best] <= 0.25 * spacing else None


def _rgb(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.uint8)


def _derived_image(pydicom, hd, image: dict, png: bytes, sources, series_uid: str, number: int, notice: str):
    """A Secondary Capture of the rendered slice, derived from the whole source series (a reformat)."""
    reference = sources[len(sources) // 2]
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=reference, pixel_array=_rgb(png), photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=SERIES_NUMBERS["sc"],
        sop_instance_uid=hd.UID(), instance_number=number, manufacturer=MANUFACTURER,
        patient_orientation=_ORIENTATION[image["plane"]])
    sc.SeriesDescription = "VoteMI key images (reformatted)"
    sc.ImageType = ["DERIVED", "SECONDARY"]
    sc.DerivationDescription = (f"{image['plane']} slice reformatted from the source series at "
                                f"{image['position']}, windowed for display ({_window_text(image)})")[:1024]
    sc.ImageComments = f"VoteMI key image {image['id']}: {image['plane']}, {image['position']}. {notice}"[:10240]
    sc.BurnedInAnnotation = "NO"
    sc.Laterality = reference.get("Laterality", "")  # type 2C: unknown (empty) unless the source says
    sc.SourceImageSequence = [_sop_reference(pydicom, ds) for ds in sources]
    sc.ContentDate, sc.ContentTime = _now()
    return sc


def _window_text(image: dict) -> str:
    window = image.get("window") or {}
    bounds = window.get("windows") or window.get("window")
    return f"{window.get('source', 'window')} {bounds}" if bounds is not None else str(window.get("source", ""))


def _sop_reference(pydicom, dataset):
    item = pydicom.Dataset()
    item.ReferencedSOPClassUID = dataset.SOPClassUID
    item.ReferencedSOPInstanceUID = dataset.SOPInstanceUID
    return item


def _now():
    from datetime import datetime

    now = datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


def _device_context(hd, codes, model: str):
    import uuid

    attributes = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=_DEVICE_UID_ROOT + str(uuid.uuid5(uuid.NAMESPACE_URL, f"votemi:{model}").int),
        name=f"VoteMI {__version__}"[:64], manufacturer_name=MANUFACTURER, model_name=(model or "unknown model")[:64])
    return hd.sr.ObserverContext(observer_type=codes.DCM.Device, observer_identifying_attributes=attributes)


def _person_context(hd, codes, reviewer: str):
    attributes = hd.sr.PersonObserverIdentifyingAttributes(name=reviewer[:64])
    return hd.sr.ObserverContext(observer_type=codes.DCM.Person, observer_identifying_attributes=attributes)


def _review_text(finding) -> str:
    if finding.status == "pending":
        return "Review: pending (not reviewed)"
    who = finding.reviewer or "an unnamed reviewer"
    text = f"Review: {finding.status} by {who} at {finding.reviewed_at}"
    if finding.original_text:
        text += f"; the model's text was: {finding.original_text}"
    return text


def _finding_item(hd, codes, finding, references, name):
    item = hd.sr.TextContentItem(name=name, value=finding.text[:1024] or "(empty)", relationship_type="CONTAINS")
    children = []
    for image_id in finding.cites:
        reference = references.get(image_id)
        if reference is not None:
            children.append(hd.sr.ImageContentItem(
                name=codes.DCM.BestIllustrationOfFinding, referenced_sop_class_uid=reference["sop_class_uid"],
                referenced_sop_instance_uid=reference["sop_instance_uid"], relationship_type="INFERRED FROM"))
    children.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=_review_text(finding),
                                          relationship_type="HAS PROPERTIES"))
    not_exported = [c for c in finding.cites if c not in references]
    if finding.unknown_cites or not_exported:
        parts = []
        if finding.unknown_cites:
            parts.append(f"cites {', '.join(finding.unknown_cites)}, not among the images sent")
        if not_exported:
            parts.append(f"cites {', '.join(not_exported)}, images of another sequence (not exported)")
        children.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value="; ".join(parts),
                                              relationship_type="HAS PROPERTIES"))
    item.ContentSequence = children
    return item


def _standing_items(hd, codes, images: list) -> list:
    """One comment a plane on whether anything stood out to the selection, with the confidence (none when the
    images record it for no plane: representative mode, guided slices)."""
    from .results import image_outcomes, outcome_text

    return [hd.sr.TextContentItem(name=codes.DCM.Comment, relationship_type="CONTAINS",
                                  value=f"Selection, {plane} plane: {outcome_text(outcome)}")
            for plane, outcome in image_outcomes(images).items()]


def _report_content(hd, codes, report, references):
    """The SR content tree with the structure of TID 2000 (Basic Diagnostic Imaging Report)."""
    from .findings import Findings

    findings = report.findings or Findings()
    root = hd.sr.ContainerContentItem(name=codes.LN.DiagnosticImagingReport)
    children = list(_device_context(hd, codes, str(report.meta.get("model", ""))))
    for reviewer in findings.summary()["reviewers"]:
        children += list(_person_context(hd, codes, reviewer))
    notice = report.meta.get("notice") or ""
    children.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=notice, relationship_type="CONTAINS"))
    children.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=f"Review state: {findings.summary_line()}",
                                          relationship_type="CONTAINS"))
    children += _standing_items(hd, codes, report.meta.get("images") or [])
    if not report.complete:
        children.append(hd.sr.TextContentItem(name=codes.DCM.Comment, relationship_type="CONTAINS",
                                              value=f"Incomplete report: {report.incomplete_reason}"[:1024]))
    sections = (("findings", codes.DCM.Findings, codes.DCM.Finding),
                ("impression", codes.DCM.Impressions, codes.DCM.Impression))
    for section, container_name, item_name in sections:
        chosen = [f for f in findings.items if f.section == section]
        if not chosen:
            continue
        container = hd.sr.ContainerContentItem(name=container_name, relationship_type="CONTAINS")
        container.ContentSequence = [_finding_item(hd, codes, f, references, item_name) for f in chosen]
        children.append(container)
    if not findings.items and report.text.strip():
        container = hd.sr.ContainerContentItem(name=codes.DCM.Findings, relationship_type="CONTAINS")
        container.ContentSequence = [hd.sr.TextContentItem(name=codes.DCM.Finding, value=report.text.strip()[:1024],
                                                           relationship_type="CONTAINS")]
        children.append(container)
    root.ContentSequence = children
    return root


def _encode(pydicom, dataset) -> bytes:
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()


def export_dicom(volume, report, pngs: dict, folder) -> DicomExport:
    """Write the SC images, the KOS and the SR of ``report`` into ``folder``.

    Parameters
    ----------
    volume : Volume
        Read from a DICOM folder (``metadata["dicom_files"]``).
    report : Report
        Its ``meta["images"]`` are the voted slices sent; its ``findings`` cite them.
    pngs : dict
        Image ID -> PNG bytes as sent to the model (the pixels of the derived images).
    folder : str

    Raises
    ------
    DicomExportError
        Non-DICOM input, missing packages, unreadable source files.
    """
    import warnings

    with warnings.catch_warnings():
        # highdicom's advice on the source's person-name style: the copies keep the source's names.
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name.*")
        # pydicom's note on over-long source values: _fit_lengths reports them in one line each.
        warnings.filterwarnings("ignore", message=".*exceeds the maximum length of.*")
        return _export(volume, report, pngs, folder)


def _export(volume, report, pngs: dict, folder) -> DicomExport:
    """:func:`export_dicom` without the warnings filter."""
    reason = why_no_dicom(volume)
    if reason:
        raise DicomExportError(reason)
    pydicom, hd = _import()
    from pydicom.sr.codedict import codes

    from .outputs import write_atomic

    result = DicomExport()
    sources = _read_sources(pydicom, volume.metadata["dicom_files"], result.notes)
    spacing = float(np.linalg.norm(volume.ijk_to_ras[:3, 2]))
    notice = report.meta.get("notice") or ""
    referenced = []
    sc_series = hd.UID()
    for image in report.meta.get("images") or []:
        if image.get("sequence_number", 1) != 1:
            result.skipped.append(f"{image['id']}: another sequence than the DICOM series")
            continue
        index = _acquired_slice(image, sources, spacing)
        if index is not None:
            source, kind, path = sources[index], "source", volume.metadata["dicom_files"][index]
        elif image["id"] in pngs:
            source = _derived_image(pydicom, hd, image, pngs[image["id"]], sources, sc_series, len(result.derived) + 1,
                                    notice)
            path = write_atomic(os.path.join(folder, f"SC_{image['id']}_{source.SOPInstanceUID}.dcm"),
                                _encode(pydicom, source), what="DICOM image")
            kind = "derived"
            result.derived.append(path)
            result.files.append(path)
        else:
            result.skipped.append(f"{image['id']}: no rendered image")
            continue
        referenced.append(source)
        result.references[image["id"]] = {"kind": kind, "sop_class_uid": str(source.SOPClassUID),
                                          "sop_instance_uid": str(source.SOPInstanceUID), "file": path}
    if not referenced:
        raise DicomExportError("no voted slice of the DICOM series to reference")
    kos = hd.ko.KeyObjectSelectionDocument(
        evidence=referenced, content=hd.ko.KeyObjectSelection(
            document_title=codes.DCM.OfInterest, referenced_objects=referenced,
            observer_device_context=_device_context(hd, codes, str(report.meta.get("model", ""))),
            description=f"Slices selected by VoteMI {__version__} and sent to the model. {notice}"[:1024]),
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["ko"], sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER)
    kos.SeriesDescription = "VoteMI key images"
    result.kos = write_atomic(os.path.join(folder, f"KO_{kos.SOPInstanceUID}.dcm"), _encode(pydicom, kos),
                              what="DICOM key object selection")
    findings = report.findings
    reviewed = findings is not None and findings.reviewed and bool(findings.summary()["reviewers"])
    sr = hd.sr.ComprehensiveSR(
        evidence=referenced, content=_report_content(hd, codes, report, result.references),
        series_instance_uid=hd.UID(), series_number=SERIES_NUMBERS["sr"], sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer=MANUFACTURER, is_complete=bool(report.complete), is_final=False,
        is_verified=reviewed, verifying_observer_name=findings.summary()["reviewers"][0][:64] if reviewed else None,
        verifying_organization="unknown" if reviewed else None)
    sr.SeriesDescription = "VoteMI report (AI-generated draft)"
    result.sr = write_atomic(os.path.join(folder, f"SR_{sr.SOPInstanceUID}.dcm"), _encode(pydicom, sr),
                             what="DICOM structured report")
    result.files += [result.kos, result.sr]
    return result
