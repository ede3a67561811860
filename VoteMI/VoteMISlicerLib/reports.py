"""The report outside its node: the panel's summary line, export to text, Markdown, JSON, HTML with the key
images, PDF (printed by Qt), and to Slicer's DICOM database (KOS, Secondary Captures, SR).

The report node itself (its text, metadata and findings) is read and written by :mod:`VoteMILib.mrml` only.
"""

from __future__ import annotations

import os
import shutil

import slicer
from slicer.i18n import tr as _


def reportSummary(reportNode):
    """One line on where the report came from, for the panel ("" for a report VoteMI never wrote)."""
    from VoteMILib import mrml

    status = mrml.report_status(reportNode)
    if not status.model and not status.has_text:
        return ""
    parts = [part for part in (status.model, status.created) if part]
    if not status.complete:
        parts.append(_("incomplete: {reason}").format(reason=status.incomplete_reason or _("not finished")))
    if status.edited:
        parts.append(_("edited by the user"))
    return "; ".join(parts)


def reportExport(reportNode, fmt="text"):
    """The report as text, Markdown or JSON, with the notice, the source and the review, as the user left it."""
    from VoteMILib import mrml

    return mrml.report_from_node(reportNode).export(fmt) if reportNode is not None else ""


def saveReport(reportNode, path, volumeNode=None, extraVolumeNodes=()):
    """Save the report by extension: HTML with the key images (re-rendered from the volumes), PDF (that
    page printed by Qt), Markdown, JSON or text; atomically. OSError names the file."""
    from VoteMILib import mrml
    from VoteMILib.outputs import write_atomic

    extension = os.path.splitext(path)[1].lower()
    if extension in (".html", ".htm", ".pdf"):
        from VoteMILib.vlm.html_export import report_html

        report = mrml.report_from_node(reportNode)
        page = report_html(report, reportImages(report.meta, volumeNode, extraVolumeNodes))
        if extension == ".pdf":
            return savePdf(page, path)
        return write_atomic(path, page, what="HTML report")
    fmt = {".md": "markdown", ".json": "json"}.get(extension, "text")
    return write_atomic(path, reportExport(reportNode, fmt), what="report")


def reportImages(meta, volumeNode, extraVolumeNodes=()):
    """Image ID -> PNG of the report's images, rendered again from the volumes as they were sent."""
    from VoteMILib import mrml
    from VoteMILib.render import Windowing
    from VoteMILib.vlm.imaging import render_png

    nodes = {1: volumeNode, **{node.GetName(): node for node in extraVolumeNodes if node is not None}}
    volumes, pngs = {}, {}
    for image in meta.get("images") or []:
        key = 1 if image.get("sequence_number", 1) == 1 else image.get("sequence")
        node = nodes.get(key)
        if node is None or "window" not in image:
            continue
        if key not in volumes:
            volumes[key] = mrml.volume_from_node(node)
        window = image["window"]
        windowing = Windowing(window["modality"], tuple(tuple(w) for w in window["windows"]), window["source"])
        pngs[image["id"]], _size = render_png(volumes[key], image["plane"], int(image["index"]), windowing,
                                              max(int(image.get("width", 896)), int(image.get("height", 896))))
    return pngs


def savePdf(page, path):
    """Print an HTML page to PDF with Qt (images registered as resources: Qt's rich text reads no data URLs)."""
    import base64
    import re
    import tempfile

    import qt
    from VoteMILib.outputs import OutputError, check_output_file

    path = check_output_file(path, "PDF report")
    document = qt.QTextDocument()
    for source in set(re.findall(r'src="(data:image/png;base64,[^"]+)"', page)):
        image = qt.QImage()
        image.loadFromData(qt.QByteArray(base64.b64decode(source.split(",", 1)[1])), "PNG")
        document.addResource(qt.QTextDocument.ImageResource, qt.QUrl(source), image)
    document.setHtml(page)
    handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".pdf",
                                         dir=os.path.dirname(path))
    os.close(handle)
    try:
        printer = qt.QPrinter(qt.QPrinter.HighResolution)
        printer.setOutputFormat(qt.QPrinter.PdfFormat)
        printer.setOutputFileName(temporary)
        (getattr(document, "print_", None) or getattr(document, "print"))(printer)
        if os.path.getsize(temporary) == 0:
            raise OutputError(f"cannot write PDF report {path}: Qt printed nothing")
        os.replace(temporary, path)
        temporary = None
    finally:
        if temporary is not None and os.path.exists(temporary):
            os.remove(temporary)
    return path


def dicomInstanceUIDs(volumeNode):
    """SOP Instance UIDs of the DICOM files the volume was loaded from (Slicer's DICOM module sets them)."""
    return (volumeNode.GetAttribute("DICOM.instanceUIDs") or "").split() if volumeNode is not None else []


def dicomSourceFiles(volumeNode):
    """The DICOM database's files of the volume's instances; ValueError says why there are none."""
    uids = dicomInstanceUIDs(volumeNode)
    if not uids:
        raise ValueError(_("'{name}' was not loaded from the DICOM database, so there is no study for key images "
                           "and a report to belong to. Load the series with the DICOM module, or save the report "
                           "as HTML instead.").format(name=volumeNode.GetName() if volumeNode else ""))
    database = getattr(slicer, "dicomDatabase", None)
    if database is None or not database.isOpen:
        raise ValueError(_("Slicer's DICOM database is not open: open it in the DICOM module first."))
    files = [database.fileForInstance(uid) for uid in uids]
    missing = [uid for uid, path in zip(uids, files) if not path or not os.path.isfile(path)]
    if missing:
        raise ValueError(_("{count} of the {total} source files of '{name}' are no longer in the DICOM "
                           "database (first: instance {uid}).").format(
            count=len(missing), total=len(uids), name=volumeNode.GetName(), uid=missing[0]))
    return files


def exportReportToDicomDatabase(reportNode, volumeNode, extraVolumeNodes=()):
    """Write the KOS, the Secondary Captures and the SR of the report and add them to the DICOM database.

    Returns the :class:`~VoteMILib.dicom_export.DicomExport`, or None if what the export needs (pydicom 3,
    highdicom) cannot run in this session. Raises :class:`~VoteMISlicerLib.packages.InstallDeclined` if the user
    declined an install, ValueError (or DicomExportError) with the reason.
    """
    from VoteMILib import mrml
    from VoteMILib.dicom_export import export_dicom

    from . import packages, run

    files = dicomSourceFiles(volumeNode)
    if not packages.ensureDicomExportDependencies():
        return None
    volume = mrml.volume_from_node(volumeNode)
    volume.metadata["dicom_files"] = files
    report = mrml.report_from_node(reportNode)
    pngs = reportImages(report.meta, volumeNode, extraVolumeNodes)
    folder = run.newRunFolder()  # under Slicer's temporary path: the files hold patient data
    try:
        written = export_dicom(volume, report, pngs, folder)
        from DICOMLib import DICOMUtils

        # Copied into the database: the run folder goes away below.
        if not DICOMUtils.importDicom(folder, copyFiles=True):
            raise ValueError(_("Slicer's DICOM database did not accept the exported files (see the error log)."))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return written
