"""``votemi describe``: select slices, then draft a report with a local vision-language model."""

from __future__ import annotations

import os
import signal
import sys
import threading

from .. import events
from ..names import DEFAULT_LANGUAGE, DEFAULT_SERVER_URL, DEFAULT_TIMEOUT_S, INPROCESS
from ..request import window_settings
from ..run import check_outputs, format_summary, run_selection, selection_document
from ..vlm.errors import VLMCancelled, VLMError
from ..vlm.packing import PACK_CHOICES
from ..vlm.pipeline import DescribeSettings, RequestParts, describe, fit_request
from ..vlm.report import NOTICE, Report
from ..vlm.urls import parse_server_url, redact_url
from .arguments import (add_backend_argument, add_key_arguments, add_selection_arguments, api_key, fail,
                        positive_int, selection_request)


def add_describe_command(commands) -> None:
    """Register ``votemi describe``."""
    parser = commands.add_parser(
        "describe", help="select slices, then draft a report with a local vision-language model",
        description="Run the selection, send the voted slices to a locally hosted vision-language model and "
                    f"stream its report. {NOTICE}.")
    add_selection_arguments(parser)
    group = parser.add_argument_group("model")
    group.add_argument("--server", default=DEFAULT_SERVER_URL, metavar="URL", help="server URL (default: %(default)s)")
    add_backend_argument(group)
    group.add_argument("--model", default="", help="model name (default: the server's only model); a folder for "
                                                   "--backend inprocess")
    add_key_arguments(group)
    group.add_argument("--timeout", type=float, default=float(DEFAULT_TIMEOUT_S), metavar="S",
                       help=f"total time limit (default: {DEFAULT_TIMEOUT_S})")
    group.add_argument("--max-tokens", type=int, default=1024, help="longest report in tokens (default: 1024)")
    group.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default: 0)")
    group.add_argument("--no-stream", action="store_true", help="wait for the whole answer instead of streaming")
    group.add_argument("--device", default="auto", help="in-process model device: auto, cpu, cuda, ... (default: auto)")
    group.add_argument("--allow-hub", action="store_true", help="let the in-process model download from a model hub")
    group = parser.add_argument_group("prompt and images")
    group.add_argument("--prompt-file", metavar="FILE", help="prompt template (placeholders: see the README)")
    group.add_argument("--language", default=DEFAULT_LANGUAGE, help="report language (default: %(default)s)")
    group.add_argument("--long-side", type=int, default=896, metavar="PX", help="image size (default: 896)")
    group.add_argument("--report", metavar="OUT", help="also save the report (.txt, .md or .json)")
    group.add_argument("--html", metavar="OUT.html",
                       help="also save the report as one self-contained HTML page (images embedded)")
    group.add_argument("--dicom-out", metavar="DIR",
                       help="DICOM input only: write a Key Object Selection of the voted slices, Secondary Captures "
                            "of the reformatted ones and a structured report (SR) into DIR (needs votemi[dicom])")
    group.add_argument("--structured", choices=("auto", "off"), default="auto",
                       help="auto: ask for the findings as JSON (structured output) and fall back to [A1] tags in "
                            "free text if the server refuses; off: free text with tags only (default: %(default)s)")
    group = parser.add_argument_group("fitting the server (see docs/servers.md)")
    group.add_argument("--pack", choices=PACK_CHOICES, default="auto",
                       help="auto: labelled contact sheets only when the server takes fewer images than the slices; "
                            "none: one image per slice, refused before sending if they do not fit; grid: contact "
                            "sheets always; turns: one image per user message, for servers limiting images per "
                            "message (default: %(default)s)")
    group.add_argument("--max-images", type=positive_int, metavar="N",
                       help="most images per request, whatever the server takes (default: what its probe found)")
    group.add_argument("--probe", action="store_true",
                       help="probe the server first (images, images per request, context, JSON schema) unless a "
                            "result younger than a week is stored; see votemi models --probe")
    group.add_argument("--context", type=int, default=0, metavar="N",
                       help="add one contact sheet of N evenly spaced slices of the acquisition plane, labelled as "
                            "context (default: none)")
    group.add_argument("--examples", metavar="DIR", default="",
                       help="worked examples: one folder per case with an image and report.txt, sent before the "
                            "question with their reports (few-shot)")
    group.add_argument("--examples-k", type=positive_int, default=1, metavar="K",
                       help="examples sent: the K closest to the scan by its patch features (default: %(default)s)")
    group.add_argument("--dry-run", action="store_true",
                       help="prepare images and prompt (see --png-dir, --json) without contacting any model")
    group.add_argument("--quiet", action="store_true", help="print only the report")
    parser.set_defaults(func=run_describe)


def settings_from_args(args) -> DescribeSettings:
    """The :class:`DescribeSettings` of a parsed ``votemi describe`` command line."""
    modality, preset, window = window_settings(args.modality, args.ct_preset, args.window)
    template = None
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as stream:
                template = stream.read()
        except (OSError, UnicodeDecodeError) as error:
            reason = getattr(error, "strerror", None) or "not UTF-8 text"
            raise VLMError(f"cannot read prompt file {args.prompt_file}: {reason}") from None
    return DescribeSettings(
        server_url=args.server, backend=args.backend, model=args.model, api_key=api_key(args),
        prompt_template=template, language=args.language, planes=tuple(args.planes), top_k=args.slices_per_plane,
        long_side=args.long_side, window=window, modality=modality, ct_preset=preset, timeout_s=args.timeout,
        stream=not args.no_stream, max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed,
        device=args.device, allow_hub=args.allow_hub, structured=args.structured, pack=args.pack,
        max_images=args.max_images, probe=args.probe, context=args.context, examples_dir=args.examples,
        examples_k=args.examples_k)


def _stored_capabilities(settings):
    """The stored probe result of the named model, for a dry run to fit as the real run would (None if none)."""
    from ..vlm.capabilities import cached

    if settings.backend == INPROCESS or not settings.model.strip():
        return None
    server = parse_server_url(settings.server_url, settings.backend).url
    return cached(settings.backend, server, settings.model.strip())


def _write_pngs(prompt, folder) -> list:
    from ..outputs import check_output_folder, write_atomic

    check_output_folder(folder, "PNG folder")
    paths = []
    for image in prompt.images:
        name = f"{image.sequence}_{image.id}_{image.plane}_{image.position_mm:+.1f}mm.png".replace(os.sep, "_")
        paths.append(write_atomic(os.path.join(folder, name), image.png, what="PNG"))
    return paths


class _CtrlC:
    """While active, the first Ctrl-C (SIGINT) asks the model request to stop instead of raising
    KeyboardInterrupt, so that the text received so far is kept and written; a second one quits at once."""

    def __init__(self):
        self.event = threading.Event()
        self._previous = None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._first)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _first(self, signum, frame):
        self.event.set()
        signal.signal(signal.SIGINT, signal.default_int_handler)
        print("\nvotemi: interrupted; saving what arrived (Ctrl-C again to quit at once)", file=sys.stderr,
              flush=True)


def run_describe(args) -> int:
    """``votemi describe``: selection, then the report streamed to stdout.

    Exit status: 0 done, 1 error, 2 bad option, 3 report incomplete, 130 interrupted. Once the
    selection is done, ``--json`` is written whatever happens next (``report_meta.complete`` false and
    ``incomplete_reason`` on failure), and ``--report`` whenever some text arrived.
    """
    try:
        settings = settings_from_args(args)
        settings.validate()
    except VLMError as error:
        return fail(str(error), 2)
    request = selection_request(args)
    check_outputs(request, {"--json": args.json, "--report": args.report, "--html": args.html},
                  png_dir=args.png_dir, more_inputs=[args.prompt_file])
    problem = _dicom_out_problem(args)
    if problem:
        return fail(problem)
    volume, extras, result = run_selection(request)
    document = selection_document(request, volume, result)
    events.emit(events.SELECTION, selection=document)
    log = sys.stderr
    if not args.quiet:
        print(format_summary(volume, result), file=log)
    interrupt = _CtrlC()
    prompt = None
    try:
        parts = RequestParts.prepare(volume, result, settings, extras)
        prompt = fit_request(parts, settings, _stored_capabilities(settings))[0]
        if args.png_dir:
            document["pngs"] = _write_pngs(prompt, args.png_dir)
            if not args.quiet:
                print(f"wrote {len(prompt.images)} PNGs to {args.png_dir}", file=log)
        if args.dry_run:
            document["prompt"] = {"intro": prompt.intro, "labels": [i.label for i in prompt.images],
                                  "attached": [a.label for a in prompt.attachments],
                                  "instruction": prompt.instruction}
            print(prompt.flat_text())
            _write_json(args.json, document)
            return 0
        if not args.quiet:
            target = settings.model if settings.backend == INPROCESS else redact_url(settings.server_url)
            print(f"sending {len(prompt.images)} slices to {target} ({settings.backend})", file=log)
        print(f"[{NOTICE}]\n", flush=True)

        def show(text):
            sys.stdout.write(text)
            sys.stdout.flush()

        streamed = events.active().text if events.active() else show
        with interrupt:
            report = describe(volume, result, settings, extras, on_text=streamed if settings.stream else None,
                              cancel=interrupt.event.is_set, parts=parts)
    except VLMError as error:
        print(file=sys.stdout)
        cancelled = isinstance(error, VLMCancelled)
        _save_unfinished(args, document, error, "interrupted by Ctrl-C" if cancelled else str(error), prompt)
        return fail("interrupted" if cancelled else str(error), 130 if cancelled else 1)
    if not settings.stream:
        show(report.text)
    print()
    if not report.complete:
        print(f"votemi: warning: incomplete report: {report.incomplete_reason}", file=sys.stderr)
    document.update(report.to_dict())
    _emit_findings(report)
    events.emit(events.REPORT, complete=report.complete, **report.to_dict())
    dicom_error = _write_dicom(args, volume, report, prompt, document)
    _write_json(args.json, document)
    if args.report:
        report.save(args.report)
    _write_html(args, report, prompt)
    if dicom_error:
        return fail(dicom_error)
    return 0 if report.complete else 3


def _save_unfinished(args, document, error, reason, prompt=None):
    """Write the selection JSON and any text received, flagged incomplete, after a failure or Ctrl-C.

    The ``--report`` file is left as it was when no text arrived: an empty draft is not worth
    replacing an earlier report with.
    """
    report = error.report or Report("", {"notice": NOTICE}, complete=False)
    report.meta["incomplete_reason"] = reason
    _emit_findings(report)
    document.update(report.to_dict())
    _write_json(args.json, document)
    if args.report and report.text.strip():
        report.save(args.report)
    if report.text.strip():
        _write_html(args, report, prompt)


def _dicom_out_problem(args) -> str:
    """Why ``--dicom-out`` cannot be honoured, found before any work ("" if it can)."""
    if not args.dicom_out:
        return ""
    if not os.path.isdir(args.image):
        return (f"--dicom-out needs a DICOM series as input: {args.image} is not a DICOM folder, so there is no "
                "patient, study or source instance for key images and a report to belong to; give the DICOM folder")
    from ..dicom_export import DicomExportError, _import
    from ..outputs import OutputError, check_output_folder

    try:
        _import()
        check_output_folder(args.dicom_out, "--dicom-out folder")
    except (DicomExportError, OutputError) as error:
        return str(error)
    return ""


def _write_dicom(args, volume, report, prompt, document) -> str:
    """``--dicom-out``: KOS, SC and SR; "" or the one-line reason it failed (the other outputs are still written)."""
    if not args.dicom_out or prompt is None:
        return ""
    from ..dicom_export import DicomExportError, export_dicom
    from ..outputs import OutputError

    try:
        written = export_dicom(volume, report, {image.id: image.png for image in prompt.images}, args.dicom_out)
    except (DicomExportError, OutputError) as error:
        return str(error)
    document["dicom_export"] = written.to_dict()
    events.emit(events.DICOM, dicom_export=written.to_dict())
    for line in written.notes + [f"not exported: {item}" for item in written.skipped]:
        print(f"votemi: warning: {line}", file=sys.stderr)
    if not args.quiet:
        print(f"wrote {len(written.files)} DICOM files to {args.dicom_out}: a key object selection, a structured "
              f"report and {len(written.derived)} secondary captures of reformatted slices", file=sys.stderr)
    return ""


def _write_html(args, report, prompt):
    """``--html``: the page with the images that were sent."""
    if not args.html or prompt is None:
        return
    from ..vlm.html_export import save_html

    save_html(args.html, report, {image.id: image.png for image in prompt.images})
    if not args.quiet:
        print(f"wrote {args.html}", file=sys.stderr)


def _emit_findings(report):
    """The ``findings`` event: the answer as findings citing their images (before the ``report`` event)."""
    if report.findings is not None and (report.text.strip() or report.findings.items):
        events.emit(events.FINDINGS, findings=report.findings.to_dict())


def _write_json(path, document):
    if not path:
        return
    from ..outputs import write_json_atomic

    write_json_atomic(path, document, what="describe JSON")
