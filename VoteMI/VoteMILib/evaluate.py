"""``votemi eval``: the same model, asked about the same scans with slices chosen four ways, by slice budget.

For every case of a dataset (a CSV of closed questions, ``image, question, choices, answer``, or of
reference reports, ``image, report``) and every slice budget, the model sees:

* ``voted``: the Vote-MI picks, best rank of each plane first (axial, coronal, sagittal in turn);
* ``uniform``: evenly spaced axial slices (today's practice, e.g. MedGemma's 85 axial slices);
* ``random``: axial slices drawn at random (seeded per case and budget);
* ``middle``: the middle axial slice, and its neighbours for a budget above 1;
* ``deduplicated``: the redundancy drop of MedPruner's first stage (arXiv 2603.11625): an axial slice whose mean
  absolute difference to the last slice kept, on intensities scaled to 0-1, is below
  :data:`REDUNDANCY_MAD` is dropped, and the budget is spread evenly over the slices left.

Each case is one task of the batch runner (:func:`VoteMILib.batch.run_cases`): resumable, parallel
on Dask, a failing case recorded with its error. Scores and summaries are in :mod:`VoteMILib.eval_scores`.
"""

from __future__ import annotations

import math
import os
import re
import sys
import time
import zlib
from dataclasses import dataclass, field, replace

import numpy as np

from . import eval_scores
from .batch import BatchError, finish_record, fingerprint_files, new_record, one_line
from .datasets import Case, read_case_table
from .names import DEFAULT_SERVER_URL, INPROCESS, PLANES
from .names import EVAL_BUDGETS as DEFAULT_BUDGETS
from .names import EVAL_STRATEGIES as STRATEGIES
from .vlm.pipeline import DescribeSettings
ANSWERS_JSONL = "summary.jsonl"

CLOSED_TEMPLATE = """\
The {image_count} images above are slices of one {modality} examination; each image is followed by its ID.
Question: {question}
Options:
{options}
Answer with the letter of one option followed by its text, and nothing else."""

REPORT_TEMPLATE = """\
The {image_count} images above are slices of one {modality} examination; each image is followed by its ID.
Write a concise radiology report in English with a Findings and an Impression section. Describe only what is \
visible in these images."""


# ---------------------------------------------------------------------------------------------
# Dataset


def load_dataset(path) -> tuple:
    """(kind, cases) of a dataset CSV: kind "closed" (question, choices, answer) or "report" (report).

    Raises
    ------
    BatchError
        Naming the line of a row that cannot be scored (no choices, an answer that is not one of them).
    CaseError
        For a table that cannot be read or has no image (:func:`VoteMILib.datasets.read_case_table`).
    """
    if not os.path.isfile(path):
        raise BatchError(f"no such dataset file: {path}")
    cases = read_case_table(path)
    columns = set(cases[0].fields)
    if {"question", "choices", "answer"} <= columns:
        kind = "closed"
    elif "report" in columns:
        kind = "report"
    else:
        raise BatchError(f"{path}: give the columns image, question, choices, answer (closed questions) or "
                         f"image, report (reference reports); found {', '.join(sorted(columns | {'image'}))}")
    names = [case.name for case in cases]
    for number, case in enumerate(cases, 2):
        if names.count(case.name) > 1:  # several questions about one scan
            case.name = f"{case.name}-{number - 1}"
        _check_row(kind, case, path, number)
    return kind, cases


def _check_row(kind, case, path, number):
    if kind == "report":
        if not (case.fields.get("report") or "").strip():
            raise BatchError(f"{path} line {number}: the report is empty")
        return
    choices = eval_scores.split_choices(case.fields.get("choices"))
    if len(choices) < 2:
        raise BatchError(f"{path} line {number}: give at least two choices separated by '|'")
    if len(choices) > len(eval_scores.LETTERS):
        raise BatchError(f"{path} line {number}: at most {len(eval_scores.LETTERS)} choices")
    normal = [" ".join(re.findall(r"\w+", c.lower())) for c in choices]
    if " ".join(re.findall(r"\w+", (case.fields.get("answer") or "").lower())) not in normal:
        raise BatchError(f"{path} line {number}: the answer '{case.fields.get('answer')}' is not one of the "
                         f"choices {' | '.join(choices)}")


# ---------------------------------------------------------------------------------------------
# Which slices each strategy sends


def voted_slices(selection, planes, budget: int) -> list:
    """The best ``budget`` voted slices: rank 1 of each plane, then rank 2, ... (fewer if the selection has fewer)."""
    by_rank = sorted((s for s in selection.selected(planes)), key=lambda s: (s.rank, planes.index(s.plane)))
    return [(s.plane, s.index, s.label) for s in by_rank[:budget]]


def axial_indices(strategy: str, count: int, budget: int, rng=None) -> list:
    """Axial slice numbers (ascending) for uniform, random or middle, out of ``count`` slices."""
    budget = min(budget, count)
    if strategy == "uniform":  # the centres of ``budget`` equal parts of the stack
        return sorted({int((n + 0.5) * count / budget) for n in range(budget)})
    if strategy == "random":
        return sorted(int(i) for i in rng.choice(count, size=budget, replace=False))
    if strategy == "middle":
        start = (count - budget) // 2
        return list(range(start, start + budget))
    raise ValueError(f"unknown strategy '{strategy}'; choose {', '.join(STRATEGIES)}")


#: MedPruner's redundancy threshold: mean absolute difference to the last kept slice, on intensities scaled to 0-1,
#: below which a slice adds nothing (the paper's stage-1 value).
REDUNDANCY_MAD = 0.05


def non_redundant_axial(volume, window=None) -> list:
    """Axial slice numbers (ascending S) left by MedPruner's first stage: each slice is kept when its mean absolute
    difference to the last kept slice, on intensities scaled to 0-1, reaches :data:`REDUNDANCY_MAD`.

    ``window`` (low, high) scales as the model is shown the slices (a CT's window, not its whole HU range, in which
    a chest CT's slices would differ by under 5 % and two slices would be left); None scales the volume's range.
    """
    from .geometry import canonical_array

    low, high = window if window is not None else (float(volume.array.min()), float(volume.array.max()))
    span = float(high) - float(low)
    canonical = canonical_array(volume.array, volume.ijk_to_ras)

    def unit(index):
        return np.clip((canonical[:, :, index] - low) / span, 0.0, 1.0) if span > 0 else np.zeros(1)

    kept, last = [0], unit(0)
    for index in range(1, canonical.shape[2]):
        current = unit(index)
        if np.mean(np.abs(current - last)) >= REDUNDANCY_MAD:
            kept.append(index)
            last = current
    return kept


def spread_over(kept: list, budget: int) -> list:
    """``budget`` of the ``kept`` slice numbers, evenly spread (all of them when the budget is larger)."""
    if budget >= len(kept):
        return list(kept)
    return sorted({kept[int((n + 0.5) * len(kept) / budget)] for n in range(budget)})


def strategy_rng(seed: int, case: str, budget: int):
    """The random strategy's draws: fixed by the seed, the case and the budget, nothing else."""
    return np.random.default_rng([seed, zlib.crc32(case.encode()), budget])


# ---------------------------------------------------------------------------------------------
# The task (runs on a worker)


class EvalCaseError(ValueError):
    """Every request of a case failed (its message is the first one's)."""


@dataclass
class EvalSettings:
    """Everything a case's answers depend on: the evaluation's own settings and the model's, a
    :class:`~VoteMILib.vlm.pipeline.DescribeSettings` like any describe run's.

    Attributes
    ----------
    kind : str
        ``closed`` (multiple-choice questions) or ``report``.
    budgets, strategies : tuple
        Images per question, and the ways of choosing them.
    mode : str or None
        Selection mode of the voted strategy.
    scorer : str
        A user scoring script; empty for none.
    describe : DescribeSettings
        The model and how it is asked: server, backend, model, API key, the planes and seed of the selection,
        image size, windowing, generation and the prompt template (None: the kind's own).
    """

    kind: str = "closed"
    budgets: tuple = DEFAULT_BUDGETS
    strategies: tuple = STRATEGIES
    mode: str | None = None
    scorer: str = ""
    describe: DescribeSettings = field(default_factory=lambda: DescribeSettings(
        server_url="", planes=PLANES, seed=0, max_tokens=512, ct_preset=None, stream=False))

    def journal_fields(self) -> dict:
        """The fields :func:`~VoteMILib.batch.settings_key` digests, flat and under the names the journals of
        earlier versions hold (``protocol`` for the backend, ``template`` for the prompt), so that a resumed
        evaluation does not start over; never the API key."""
        model = self.describe
        return {"kind": self.kind, "server_url": model.server_url, "protocol": model.backend, "model": model.model,
                "budgets": self.budgets, "strategies": self.strategies, "planes": model.planes, "mode": self.mode,
                "seed": model.seed, "long_side": model.long_side, "max_tokens": model.max_tokens,
                "timeout_s": model.timeout_s, "device": model.device, "modality": model.modality,
                "ct_preset": model.ct_preset, "window": model.window, "template": model.prompt_template or "",
                "scorer": self.scorer}


def eval_case(case: Case, settings: EvalSettings) -> dict:
    """Select, then ask the model once per strategy and budget, and score each answer.

    A model error on one question is recorded on that answer (its scores are missing); an error
    before any question (unreadable image) or on every question (unreachable server) fails the case.
    """
    from .selection import select_slices
    from .volumes import load_volume

    started = time.perf_counter()
    record = new_record(case)
    try:
        record["inputs"] = fingerprint_files(case.input_files())
        volume = load_volume(case.image)
        slices_per_plane = math.ceil(max(settings.budgets) / len(settings.describe.planes))
        selection = select_slices(volume, planes=settings.describe.planes, top_k=slices_per_plane,
                                  seed=settings.describe.seed,
                                  mode=settings.mode or "findings",
                                  extra_volumes=[load_volume(path) for path in case.extras])
        asker = _Asker(volume, selection, settings)
        record["answers"] = [asker.answer(case, strategy, budget)
                             for budget in settings.budgets for strategy in settings.strategies]
        if all(item.get("error") for item in record["answers"]):  # e.g. no server: try the case again next time
            raise EvalCaseError(record["answers"][0]["error"])
        record.update(status="ok", model=asker.model or settings.describe.model, region=selection.region.get("name", ""),
                      modality=selection.region.get("modality", ""))
    except Exception as error:  # noqa: BLE001 - recorded; the evaluation goes on with the other cases
        record.update(status="failed", error=one_line(error))
    return finish_record(record, started)


class _Asker:
    """Renders slices (once each), asks the model, scores the answer."""

    def __init__(self, volume, selection, settings: EvalSettings):
        from .geometry import plane_geometry
        from .vlm.imaging import choose_windowing
        from .vlm.pipeline import _resolve_model, make_client

        self.volume, self.selection, self.settings = volume, selection, settings
        self.axial_count = plane_geometry(volume.ijk_to_ras, volume.size_ijk, "axial").count
        describe = settings.describe
        self.windowing = choose_windowing(volume, describe.modality, describe.ct_preset, describe.window,
                                          region=selection.region.get("name"))
        # An empty server URL is recorded as given (the journal digests it) and means VoteMI's default server.
        describe = replace(describe, server_url=describe.server_url or DEFAULT_SERVER_URL)
        self.client = make_client(describe)
        self.model = _resolve_model(self.client, describe)
        self._pngs = {}
        self._non_redundant = None

    def slices(self, case_name: str, strategy: str, budget: int) -> list:
        """[(plane, index, ID)] in the order sent."""
        if strategy == "voted":
            return voted_slices(self.selection, list(self.settings.describe.planes), budget)
        if strategy == "deduplicated":
            if self._non_redundant is None:
                self._non_redundant = non_redundant_axial(self.volume, self.windowing.windows[0])
            indices = spread_over(self._non_redundant, budget)
        else:
            rng = strategy_rng(self.settings.describe.seed, case_name, budget) if strategy == "random" else None
            indices = axial_indices(strategy, self.axial_count, budget, rng)
        return [("axial", index, f"A{n}") for n, index in enumerate(indices, 1)]

    def image(self, plane, index, label):
        from .geometry import plane_geometry
        from .vlm.imaging import render_png
        from .vlm.prompts import PromptImage, format_position

        if (plane, index) not in self._pngs:
            self._pngs[plane, index] = render_png(self.volume, plane, index, self.windowing,
                                                      self.settings.describe.long_side)
        png, _ = self._pngs[plane, index]
        position = float(plane_geometry(self.volume.ijk_to_ras, self.volume.size_ijk, plane).positions_mm[index])
        return PromptImage(label, plane, position, "", png, {"index": int(index),
                                                              "position": format_position(plane, position)})

    def answer(self, case: Case, strategy: str, budget: int) -> dict:
        from .vlm.options import GenerationOptions

        chosen = self.slices(case.name, strategy, budget)
        item = {"strategy": strategy, "budget": budget, "images": len(chosen),
                "slices": [f"{plane} {index}" for plane, index, _ in chosen]}
        started = time.perf_counter()
        try:
            prompt = self.prompt(case, [self.image(*c) for c in chosen])
            options = GenerationOptions(max_tokens=self.settings.describe.max_tokens, temperature=0.0,
                                        seed=self.settings.describe.seed,
                                        stream=False)
            result = self.client.chat(prompt, self.model, options)
            item["text"] = result.text
            item.update(self.score(case, strategy, budget, result.text))
        except Exception as error:  # noqa: BLE001 - this answer has no score; the others go on
            item["error"] = one_line(error)
        item["seconds"] = round(time.perf_counter() - started, 3)
        return item

    def prompt(self, case: Case, images: list):
        from .vlm.prompts import build_prompt

        fields = case.fields
        options = "\n".join(f"{eval_scores.LETTERS[n]}) {c}"
                            for n, c in enumerate(eval_scores.split_choices(fields.get("choices"))))
        template = self.settings.describe.prompt_template or (CLOSED_TEMPLATE if self.settings.kind == "closed" else REPORT_TEMPLATE)
        # The case's own text may hold braces: they must reach the model as written.
        for name, value in (("question", fields.get("question", "")), ("options", options)):
            template = template.replace("{" + name + "}", value.replace("{", "{{").replace("}", "}}"))
        return build_prompt(images, template, modality=self.windowing.modality)

    def score(self, case: Case, strategy: str, budget: int, text: str) -> dict:
        fields = case.fields
        if self.settings.kind == "closed":
            scores = eval_scores.closed_scores(text, eval_scores.split_choices(fields["choices"]), fields["answer"])
        else:
            scores = eval_scores.report_scores(text, fields["report"])
        if self.settings.scorer:
            scores[eval_scores.USER_METRIC] = eval_scores.user_score(self.settings.scorer, {
                "case": case.name, "strategy": strategy, "budget": budget, "prediction": text, **fields})
        return scores


# ---------------------------------------------------------------------------------------------
# Outputs (driver side)


def store_answers(record: dict) -> dict:
    """Answers stay in the journal itself; nothing else must exist for the case to count as done."""
    record["outputs"] = []
    return record


def metrics_of(settings: EvalSettings) -> tuple:
    metrics = eval_scores.CLOSED_METRICS if settings.kind == "closed" else eval_scores.REPORT_METRICS
    return (*metrics, eval_scores.USER_METRIC) if settings.scorer else metrics


ANSWER_COLUMNS = ("case", "strategy", "budget", "images", "slices", "prediction", "parsed", "accuracy", "rouge_l",
                  "bleu", "meteor", "user", "seconds", "error", "text")


def answers_csv(records: list) -> str:
    import csv
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, ANSWER_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for record in records:
        if record.get("status") != "ok":
            writer.writerow({"case": record["case"], "error": record.get("error", "")})
        for item in record.get("answers", []):
            writer.writerow({"case": record["case"], **item, "slices": "; ".join(item.get("slices", []))})
    return buffer.getvalue()


def write_results(out: str, records: list, settings: EvalSettings, resamples: int) -> list:
    """answers.csv, results.csv, results.md and results.png; returns the result rows."""
    from .outputs import write_atomic

    metrics = metrics_of(settings)
    rows = eval_scores.summarise(records, metrics, list(settings.strategies), list(settings.budgets), resamples,
                                 settings.describe.seed)
    model = next((r["model"] for r in records if r.get("model")),
                 settings.describe.model or settings.describe.backend)
    title = f"{os.path.basename(os.path.normpath(model))}: {len(records)} cases"
    write_atomic(os.path.join(out, "answers.csv"), answers_csv(records), what="answers CSV")
    write_atomic(os.path.join(out, "results.csv"), eval_scores.results_csv(rows), what="results CSV")
    write_atomic(os.path.join(out, "results.md"),
                 eval_scores.results_markdown(rows, metrics, settings.budgets, title), what="results table")
    write_atomic(os.path.join(out, "results.png"),
                 eval_scores.results_plot(rows, metrics, settings.strategies, settings.budgets, title),
                 what="results plot")
    return rows


# ---------------------------------------------------------------------------------------------
# Fitting the run to the machine and the server


def model_bytes(settings: EvalSettings) -> int:
    """Memory an in-process model takes on each worker: torch itself, then the weights about twice over."""
    model = settings.describe.model
    if settings.describe.backend != INPROCESS or not os.path.isdir(model):
        return 0
    weights = sum(os.path.getsize(os.path.join(folder, name)) for folder, _, names in os.walk(model) for name in names)
    return 2 ** 30 + 2 * weights


def probed_image_limit(server: str, backend: str, model: str, api_key: str, timeout_s: float) -> tuple:
    """(images the server takes per request or None when no limit was found, where that came from), from the
    stored or a new probe of the server (:mod:`VoteMILib.vlm.capabilities`).

    Raises
    ------
    BatchError
        When the server cannot be reached or its model takes no images.
    """
    from .vlm.capabilities import capabilities_for
    from .vlm.errors import VLMError
    from .vlm.pipeline import DescribeSettings, _resolve_model, make_client

    settings = DescribeSettings(server_url=server or DescribeSettings.server_url, backend=backend, model=model,
                                api_key=api_key, timeout_s=timeout_s)
    try:
        client = make_client(settings)
        name = _resolve_model(client, settings)
        found = capabilities_for(client, name, settings, True)
    except VLMError as error:  # a one-line reason: unreachable, refused, no such model
        raise BatchError(str(error)) from None
    print(f"votemi eval: {found.server} {name}: {found.summary()}", file=sys.stderr)
    if found.image_limit == 0:
        raise BatchError(f"{found.server}: the model {name or '(default)'} takes no images")
    return found.image_limit, f"the {found.image_limit} images per request the server takes (probed)"
