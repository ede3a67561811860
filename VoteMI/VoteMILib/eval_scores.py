"""Scores of ``votemi eval``: reading a closed answer, report metrics, a user's scorer, bootstrap summaries,
the tables and the plot.

Report metrics come from maintained libraries: ROUGE-L from ``rouge-score``, BLEU and METEOR from
``nltk``. METEOR's synonyms come from a WordNet 3.0 database already on the machine (Debian's
``wordnet-base`` puts it in /usr/share/wordnet; ``VOTEMI_WORDNET`` names another folder); nothing is
downloaded.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess

import numpy as np

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CLOSED_METRICS = ("accuracy",)
REPORT_METRICS = ("rouge_l", "bleu", "meteor")
USER_METRIC = "user"
WORDNET_FOLDERS = ("/usr/share/wordnet", "/usr/local/share/wordnet", "/opt/homebrew/share/wordnet")
#: The lexicographer file names of WordNet 3.0 (the ``lexnames`` file, which Debian's package lacks and
#: nltk's reader opens); METEOR never uses them, the reader only needs them to start.
_LEXNAMES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant",
    "noun.possession", "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state",
    "noun.substance", "noun.time", "verb.body", "verb.change", "verb.cognition", "verb.communication",
    "verb.competition", "verb.consumption", "verb.contact", "verb.creation", "verb.emotion", "verb.motion",
    "verb.perception", "verb.possession", "verb.social", "verb.stative", "verb.weather", "adj.ppl")
_POS_NUMBER = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}


class ScoreError(ValueError):
    """A scorer that cannot run (missing library or WordNet, a user scorer that fails); one line."""


# ---------------------------------------------------------------------------------------------
# Closed questions


def split_choices(text: str) -> list:
    return [choice.strip() for choice in (text or "").split("|") if choice.strip()]


def _normal(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


_LETTER_ANSWER = re.compile(
    r"^[\s*_\"'`]*(?i:(?:the\s+)?(?:correct\s+|final\s+)?(?:answer|option|choice)(?:\s+is)?\s*[:\-]?\s*)?"
    r"[(\[]?([A-Z])(?:[).:\]]|\s*$)")


def parse_choice(answer: str, choices) -> int | None:
    """Which option an answer picks (index into ``choices``), or None when it names none.

    Reads an option letter first (``B``, ``(B)``, ``B) mass``, ``Answer: B.``), then the text of an
    option as whole words; when several options appear, the one named first wins (at the same place the
    longer one, so that ``left lower lobe`` beats ``left``).
    """
    text = (answer or "").strip()
    match = _LETTER_ANSWER.match(text)
    if match and match.group(1) in LETTERS[:len(choices)]:
        return LETTERS.index(match.group(1))
    spoken = f" {_normal(text)} "
    found = []
    for index, choice in enumerate(choices):
        wanted = _normal(choice)
        where = spoken.find(f" {wanted} ") if wanted else -1
        if where >= 0:
            found.append((where, -len(wanted), index))
    return min(found)[2] if found else None


def closed_scores(answer: str, choices, reference: str) -> dict:
    """``accuracy`` 1 or 0, the option read (``prediction``) and whether one was read at all."""
    picked = parse_choice(answer, choices)
    truth = [_normal(c) for c in choices].index(_normal(reference))
    return {"prediction": None if picked is None else choices[picked], "parsed": picked is not None,
            "accuracy": float(picked == truth)}


# ---------------------------------------------------------------------------------------------
# Reports


def tokens(text: str) -> list:
    return re.findall(r"[a-z0-9]+", (text or "").lower())


_WORDNET = {}


def wordnet_folder() -> str:
    """The folder of the WordNet 3.0 database (``VOTEMI_WORDNET``, else the usual system places).

    Raises
    ------
    ScoreError
        When there is none (METEOR cannot run).
    """
    folder = os.environ.get("VOTEMI_WORDNET") or next(
        (f for f in WORDNET_FOLDERS if os.path.isfile(os.path.join(f, "data.noun"))), None)
    if not folder or not os.path.isfile(os.path.join(folder, "data.noun")):
        raise ScoreError("METEOR needs the WordNet 3.0 database: install it (Debian/Ubuntu: apt-get install "
                         "wordnet-base) or set VOTEMI_WORDNET to its folder")
    return folder


def wordnet():
    """nltk's WordNet reader on the machine's WordNet 3.0 database (never downloaded; takes seconds to load)."""
    if "reader" in _WORDNET:
        return _WORDNET["reader"]
    try:
        import nltk
    except ImportError:
        raise ScoreError("report scores need rouge-score and nltk: pip install 'votemi[eval]'") from None
    folder = wordnet_folder()
    if folder not in nltk.data.path:
        nltk.data.path.append(folder)  # nltk reads corpora only below the folders of its data path
    import warnings

    with warnings.catch_warnings():  # "no multilingual functions": there is no Open Multilingual Wordnet here
        warnings.simplefilter("ignore", UserWarning)
        _WORDNET["reader"] = _reader_class()(folder, None)
    return _WORDNET["reader"]


def _reader_class():
    """nltk's WordNet reader, given the ``lexnames`` list from memory when the database lacks the file, and
    without the mapping to nltk's own WordNet copy (it only serves the multilingual data, absent here)."""
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class Reader(WordNetCorpusReader):
        def open(self, file):
            if file == "lexnames" and not os.path.isfile(os.path.join(str(self.root), "lexnames")):
                return io.StringIO("".join(f"{n:02d}\t{name}\t{_POS_NUMBER[name.split('.')[0]]}\n"
                                           for n, name in enumerate(_LEXNAMES)))
            return super().open(file)

        def map_wn(self, version="wordnet"):
            return None

    return Reader


def report_scores(answer: str, reference: str) -> dict:
    """ROUGE-L F1 (stemmed), sentence BLEU-4 (smoothed) and METEOR of one report against its reference."""
    try:
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
        from nltk.translate.meteor_score import meteor_score
        from rouge_score import rouge_scorer
    except ImportError:
        raise ScoreError("report scores need rouge-score and nltk: pip install 'votemi[eval]'") from None
    hypothesis, truth = tokens(answer), tokens(reference)
    rouge = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True).score(reference, answer or "")["rougeL"]
    bleu = sentence_bleu([truth], hypothesis, smoothing_function=SmoothingFunction().method1) if hypothesis else 0.0
    meteor = meteor_score([truth], hypothesis, wordnet=wordnet()) if hypothesis else 0.0
    return {"rouge_l": float(rouge.fmeasure), "bleu": float(bleu), "meteor": float(meteor)}


def user_score(command: str, item: dict, timeout_s: float = 120.0) -> float:
    """Run the user's scorer: ``item`` as JSON on its standard input, one number on its standard output.

    Raises
    ------
    ScoreError
        When the command cannot start, fails, or prints no number.
    """
    try:
        done = subprocess.run(shlex.split(command), input=json.dumps(item), capture_output=True, text=True,
                              timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ScoreError(f"scorer '{command}' did not run: {error}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [""])[-1]
        raise ScoreError(f"scorer '{command}' exited with {done.returncode}: {last}")
    try:
        return float(done.stdout.strip().split()[-1])
    except (ValueError, IndexError):
        raise ScoreError(f"scorer '{command}' printed no number (got {done.stdout.strip()[:60]!r})") from None


# ---------------------------------------------------------------------------------------------
# Summaries over cases


def score_table(records: list, metric: str) -> dict:
    """{(strategy, budget): {case: value}} of one metric over the answers that have it."""
    table = {}
    for record in records:
        for item in record.get("answers", []):
            value = item.get(metric)
            if value is not None:
                table.setdefault((item["strategy"], item["budget"]), {})[record["case"]] = float(value)
    return table


def bootstrap_mean(values, resamples: int, rng) -> tuple:
    """(mean, 2.5th and 97.5th percentile of the mean over ``resamples`` resamples of the cases)."""
    values = np.asarray(values, dtype=float)
    if len(values) == 0:
        return float("nan"), float("nan"), float("nan")
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    return float(values.mean()), float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarise(records: list, metrics, strategies, budgets, resamples: int = 1000, seed: int = 0) -> list:
    """Rows ``strategy, budget, metric, cases, mean, ci_low, ci_high``, and for every other strategy
    ``voted-minus-<strategy>`` rows of the paired difference (over the cases both answered)."""
    rows = []
    for metric in metrics:
        table = score_table(records, metric)
        for budget in budgets:
            for strategy in strategies:
                values = table.get((strategy, budget), {})
                rng = np.random.default_rng([seed, budget, strategies.index(strategy)])
                rows.append(_row(strategy, budget, metric, list(values.values()), resamples, rng))
            voted = table.get(("voted", budget), {})
            for strategy in (s for s in strategies if s != "voted" and "voted" in strategies):
                other = table.get((strategy, budget), {})
                paired = [voted[c] - other[c] for c in voted if c in other]
                rng = np.random.default_rng([seed, budget, 100 + strategies.index(strategy)])
                rows.append(_row(f"voted-minus-{strategy}", budget, metric, paired, resamples, rng))
    return rows


def _row(strategy, budget, metric, values, resamples, rng) -> dict:
    mean, low, high = bootstrap_mean(values, resamples, rng)
    return {"strategy": strategy, "budget": budget, "metric": metric, "cases": len(values),
            "mean": mean, "ci_low": low, "ci_high": high}


RESULT_COLUMNS = ("strategy", "budget", "metric", "cases", "mean", "ci_low", "ci_high")


def results_csv(rows: list) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in row.items()})
    return buffer.getvalue()


def results_markdown(rows: list, metrics, budgets, title: str = "") -> str:
    """One table per metric: a row per strategy, a column per budget, ``mean [low, high]``."""
    lines = [f"# {title}", ""] if title else []
    for metric in metrics:
        lines += [f"## {metric}", "", "| strategy | " + " | ".join(f"{b} slices" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        strategies = list(dict.fromkeys(r["strategy"] for r in rows if r["metric"] == metric))
        for strategy in strategies:
            cells = []
            for budget in budgets:
                row = next((r for r in rows if r["metric"] == metric and r["strategy"] == strategy
                            and r["budget"] == budget), None)
                cells.append("-" if row is None or not row["cases"] else
                             f"{row['mean']:.3f} [{row['ci_low']:.3f}, {row['ci_high']:.3f}] (n={row['cases']})")
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        lines.append("")
    lines.append("Mean over cases [95 % bootstrap interval over cases]; voted-minus-X rows are paired differences.")
    return "\n".join(lines) + "\n"


def results_plot(rows: list, metrics, strategies, budgets, title: str = "") -> bytes:
    """PNG: each metric against the slice budget, one line per strategy with its bootstrap interval."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ScoreError("the plot needs matplotlib: pip install 'votemi[eval]'") from None
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        for strategy in strategies:
            points = [r for budget in budgets for r in rows if r["metric"] == metric and r["strategy"] == strategy
                      and r["budget"] == budget and r["cases"]]
            if not points:
                continue
            x = [p["budget"] for p in points]
            axis.plot(x, [p["mean"] for p in points], marker="o", label=strategy)
            axis.fill_between(x, [p["ci_low"] for p in points], [p["ci_high"] for p in points], alpha=0.2)
        if metric != USER_METRIC:  # every built-in score lies in 0..1
            axis.set_ylim(-0.02, 1.02)
        axis.set_xscale("log")
        axis.set_xticks(list(budgets), [str(b) for b in budgets])
        axis.minorticks_off()
        axis.set_xlabel("slices sent to the model")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    plt.close(figure)
    return buffer.getvalue()
