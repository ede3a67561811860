"""The lines of the panel's Log section: one run's child events as they arrive, with times and step durations."""

from __future__ import annotations

import time

from slicer.i18n import tr as _


def _seconds(value):
    return _("{seconds} s").format(seconds="%.2f" % float(value))


class RunLog:
    """Turns one run's child events into log lines, each stamped with the seconds since the run started.

    A progress message ends the step before it, so each step's line says how long it took; the selection's own
    step timings (``timing_s`` of the selection document) and the model's answer time are logged as they come.
    ``clock`` returns seconds (``time.monotonic`` unless a test gives another).
    """

    def __init__(self, clock=time.monotonic):
        self._clock = clock
        self._started = clock()
        self._step = None  # (message, started)
        self._answering = False

    def _stamp(self, text):
        return "%7.2f s  %s" % (self._clock() - self._started, text)

    def _endStep(self):
        """The line closing the running step (its duration), or none."""
        if self._step is None:
            return []
        message, started = self._step
        self._step = None
        return [self._stamp(_("done in {duration}: {step}").format(duration=_seconds(self._clock() - started),
                                                                   step=message))]

    def started(self, what, writeSeconds=None):
        """The first lines: what runs, and how long writing its input took."""
        lines = [self._stamp(_("Started: {what}").format(what=what))]
        if writeSeconds is not None:
            lines.append(self._stamp(_("Input written for the child in {duration}").format(
                duration=_seconds(writeSeconds))))
        return lines

    def lines(self, event):
        """The log lines of one child event (none for events the log does not show, like streamed text)."""
        kind = event.get("event")
        handler = getattr(self, "_on_" + str(kind), None)
        return handler(event) if handler is not None else []

    def _on_progress(self, event):
        message = str(event.get("message") or "").strip()
        if not message or (self._step is not None and self._step[0] == message):
            return []  # the same step advancing
        lines = self._endStep()
        self._step = (message, self._clock())
        return lines + [self._stamp(message)]

    def _on_log(self, event):
        return [self._stamp(str(event.get("text", "")))]

    def _on_selection(self, event):
        document = event.get("selection") or {}
        lines = self._endStep()
        counts = ", ".join("%s %d" % (plane, len(result.get("selected", [])))
                           for plane, result in (document.get("planes") or {}).items())
        lines.append(self._stamp(_("Slices selected: {counts}").format(counts=counts) if counts
                                 else _("Slices selected.")))
        timings = document.get("timing_s") or {}
        if timings:
            steps = ", ".join("%s %s" % (name, _seconds(value)) for name, value in timings.items())
            lines.append(self._stamp(_("Selection step timings: {steps}").format(steps=steps)))
        return lines

    def _on_text(self, event):
        if self._answering:
            return []
        self._answering = True
        return [self._stamp(_("The model started answering."))]

    def _on_findings(self, event):
        count = len((event.get("findings") or {}).get("items", []))
        return [self._stamp(_("Findings: {count}").format(count=count))]

    def _on_report(self, event):
        meta = event.get("report_meta") or {}
        if event.get("complete", True):
            text = _("Report complete")
        else:
            text = _("Report incomplete: {reason}").format(reason=meta.get("incomplete_reason", ""))
        if meta.get("model"):
            text += " (" + _("model {model}").format(model=meta["model"]) + ")"
        if meta.get("duration_s") is not None:
            text += "; " + _("the model took {duration}").format(duration=_seconds(meta["duration_s"]))
        return [self._stamp(text)]

    def _on_error(self, event):
        return self._endStep() + [self._stamp(_("Error: {message}").format(message=event.get("message", "")))]

    def _on_done(self, event):
        return self._endStep() + [self._stamp(_("The child process ended (exit code {code}).").format(
            code=event.get("exit_code", "?")))]

    def note(self, text):
        """A line of the panel's own (a cancel), ending the running step."""
        return self._endStep() + [self._stamp(text)]

    def childOutput(self, stderrText):
        """The child's own messages (its stderr: summaries, warnings, tracebacks), one line each, at the end."""
        lines = [line.rstrip() for line in str(stderrText or "").splitlines() if line.strip()]
        return [_("Child process messages:")] + ["    " + line for line in lines] if lines else []
