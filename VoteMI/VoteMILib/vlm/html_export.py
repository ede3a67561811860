"""The report as one self-contained HTML page: notice, findings beside their cited slices, review, provenance.

Images are embedded as ``data:`` URIs (thumbnails beside each finding, the key images at full size
at the end), styles are inline, nothing is fetched: the page can be mailed, archived or printed to
PDF as it is. Used by ``votemi describe --html`` and the Slicer panel's *Save report...*.
"""

from __future__ import annotations

import base64
import io
from datetime import datetime, timezone
from html import escape

from .. import __version__
from ..results import image_outcomes, outcome_text
from .report import NOTICE

THUMBNAIL_PX = 180
#: Long side at which the key images are shown (they are embedded at full size).
KEY_IMAGE_PX = 420

_STYLE = """
body{font-family:"DejaVu Sans",Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1d232a;font-size:14px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;border-bottom:1px solid #ccd;padding-bottom:3px;margin-top:26px}
.notice{background:#fff3cd;border:2px solid #d9a400;padding:10px 14px;font-weight:bold;margin:12px 0}
.warning{background:#fde2e1;border:1px solid #c0392b;padding:8px 12px;margin:8px 0}
.state{font-size:15px;margin:6px 0 14px}.muted{color:#5c6670}
table.finding{width:100%;border-collapse:collapse;margin:0 0 10px}
table.finding td{vertical-align:top;border:1px solid #d5d9de;padding:8px}
td.text{width:50%}td.images{white-space:normal}
.badge{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;font-weight:bold;color:#fff}
.pending{background:#7f8c8d}.accepted{background:#218c4a}.edited{background:#2471a3}.rejected{background:#b03a2e}
tr.row-rejected td.text span.body{text-decoration:line-through;color:#777}tr.row-rejected{background:#faf1f0}
tr.row-accepted,tr.row-edited{background:#f1f8f3}
figure{display:inline-block;vertical-align:top;margin:0 8px 6px 0;text-align:center}
figure img{background:#000;display:block;margin:auto}figcaption{font-size:12px;color:#444;max-width:200px}
td.images img{max-width:180px;max-height:180px}.keyimages img{max-width:420px;max-height:420px}
.keyimages figcaption{max-width:420px}
.unknown{color:#b03a2e;font-weight:bold}
table.meta{border-collapse:collapse}table.meta td{border:1px solid #e0e3e6;padding:3px 8px;font-size:13px}
pre{white-space:pre-wrap;background:#f5f6f7;padding:10px;border:1px solid #e0e3e6}
@media print{body{margin:0;max-width:none}.keyimages figure{page-break-inside:avoid}}
"""


def _data_uri(png: bytes, long_side: int | None = None) -> str:
    """``png`` as a data URI, scaled down to ``long_side`` pixels first if given."""
    if long_side is not None:
        from PIL import Image

        image = Image.open(io.BytesIO(png))
        if max(image.size) > long_side:
            image.thumbnail((long_side, long_side))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True)
            png = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _shown_size(png: bytes, long_side: int) -> tuple:
    """Width and height to show ``png`` at, its long side at most ``long_side``."""
    from PIL import Image

    width, height = Image.open(io.BytesIO(png)).size
    scale = min(1.0, long_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _figure(image_meta: dict, png: bytes | None, long_side: int | None) -> str:
    caption = escape(f"{image_meta['id']}: {image_meta['plane']}, {image_meta['position']}"
                     + (f", {image_meta['sequence']}" if image_meta.get("sequence") else ""))
    if png is None:
        return f'<figure><figcaption>{caption} (image not available)</figcaption></figure>'
    # Explicit sizes: Qt's rich text (the panel's PDF) ignores CSS max-width.
    width, height = _shown_size(png, long_side or KEY_IMAGE_PX)
    return (f'<figure><img src="{_data_uri(png, long_side)}" width="{width}" height="{height}" alt="{caption}">'
            f"<figcaption>{caption}</figcaption></figure>")


def _finding_row(finding, images_by_id: dict, pngs: dict) -> str:
    status = finding.status
    who = (f'<div class="muted">{escape(status)} by {escape(finding.reviewer or "unnamed reviewer")}, '
           f"{escape(finding.reviewed_at)}</div>") if status != "pending" else ""
    original = (f'<div class="muted">Model\'s text: {escape(finding.original_text)}</div>'
                if finding.original_text else "")
    cites = ", ".join(escape(c) for c in finding.cites)
    unknown = (f' <span class="unknown">[cites {escape(", ".join(finding.unknown_cites))}: not among the images '
               "sent]</span>") if finding.unknown_cites else ""
    no_cite = ' <span class="unknown">[cites no image]</span>' if not finding.all_cites else ""
    figures = "".join(_figure(images_by_id[c], pngs.get(c), THUMBNAIL_PX) for c in finding.cites
                      if c in images_by_id)
    return (f'<table class="finding"><tr class="row-{status}"><td class="text">'
            f'<span class="badge {status}">{escape(status)}</span> <span class="body">{escape(finding.text)}</span>'
            f"{' [' + cites + ']' if cites else ''}{unknown}{no_cite}{original}{who}</td>"
            f'<td class="images">{figures}</td></tr></table>')


def _standing_section(images: list) -> str:
    """Whether anything stood out in each plane described, with the confidence, so that a plane's typical anatomy
    is not read as a finding's slice; empty when the images record none (representative mode, guided)."""
    outcomes = image_outcomes(images)
    if not outcomes:
        return ""
    rows = "".join(f"<li>{escape(plane.capitalize())}: {escape(outcome_text(outcome))}</li>"
                   for plane, outcome in outcomes.items())
    return f'<div class="state"><b>What stood out to the selection:</b><ul>{rows}</ul></div>'


def _settings_rows(meta: dict) -> str:
    settings = meta.get("settings") or {}
    shown = {"VoteMI version": meta.get("votemi_version", __version__), "Model": meta.get("model", ""),
             "Server": meta.get("server", ""), "Protocol": meta.get("protocol", ""),
             "Drafted": meta.get("created", ""), "Volume": meta.get("volume", ""),
             "Sequences": ", ".join(meta.get("sequences") or []), "Modality": meta.get("modality", ""),
             "Selection": ", ".join(f"{k} {v}" for k, v in (meta.get("selection_settings") or {}).items()),
             "Structured output": _structured_line(meta.get("structured_output") or {}),
             "Describe settings": ", ".join(f"{key} {settings[key]}" for key in
                                            ("planes", "top_k", "language", "long_side", "ct_preset", "window",
                                             "max_tokens", "temperature", "seed") if key in settings)}
    return "".join(f"<tr><td>{escape(k)}</td><td>{escape(str(v))}</td></tr>" for k, v in shown.items() if v)


def _structured_line(structured: dict) -> str:
    if not structured:
        return ""
    line = "used" if structured.get("used") else ("asked, not used" if structured.get("requested") else "off")
    return f"{line}; {structured['note']}" if structured.get("note") else line


def report_html(report, pngs: dict | None = None, title: str | None = None, exported: str | None = None) -> str:
    """The page for ``report``.

    Parameters
    ----------
    report : Report
        With ``findings`` (else its text is shown as one block).
    pngs : dict, optional
        Image ID -> PNG bytes of the images sent (``report.meta["images"]`` describes them).
    title : str, optional
    exported : str, optional
        Time of the export (ISO 8601); now if None.
    """
    pngs = pngs or {}
    meta = report.meta
    images = meta.get("images") or []
    by_id = {image["id"]: image for image in images}
    exported = exported or datetime.now(timezone.utc).isoformat(timespec="seconds")
    title = title or f"VoteMI report: {meta.get('volume') or 'volume'}"
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{escape(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{escape(title)}</h1>",
             f'<div class="notice">{escape(meta.get("notice") or NOTICE)}</div>']
    findings = report.findings
    if findings is not None and findings.items:
        parts.append(f'<div class="state"><b>Review:</b> {escape(findings.summary_line())}</div>')
    parts.append(_standing_section(images))
    if not report.complete:
        parts.append(f'<div class="warning">Incomplete report: {escape(report.incomplete_reason)}</div>')
    if findings is not None and findings.unknown_ids():
        parts.append('<div class="warning">The model cited images that were not sent: '
                     f'{escape(", ".join(findings.unknown_ids()))}.</div>')
    if findings is not None and findings.items:
        for section in ("findings", "impression"):
            chosen = [f for f in findings.items if f.section == section]
            if chosen:
                parts.append(f"<h2>{section.capitalize()}</h2>")
                parts += [_finding_row(f, by_id, pngs) for f in chosen]
        if findings.free_text.strip():
            parts.append(f"<h2>Other text of the answer</h2><pre>{escape(findings.free_text.strip())}</pre>")
    else:
        parts.append(f"<h2>Report</h2><pre>{escape(report.text.strip())}</pre>")
    parts.append('<h2>Key images</h2><div class="keyimages">')
    parts += [_figure(image, pngs.get(image["id"]), None) for image in images]
    parts.append("</div><h2>Provenance</h2><table class=\"meta\">")
    parts.append(_settings_rows(meta))
    parts.append(f"<tr><td>Exported</td><td>{escape(exported)} by VoteMI {escape(__version__)}</td></tr></table>")
    parts.append(f'<div class="notice">{escape(meta.get("notice") or NOTICE)}</div></body></html>')
    return "\n".join(parts) + "\n"


def save_html(path, report, pngs: dict | None = None, title: str | None = None) -> str:
    """Write :func:`report_html` atomically; returns the path."""
    from ..outputs import write_atomic

    write_atomic(path, report_html(report, pngs, title).encode("utf-8"), what="HTML report")
    return str(path)
