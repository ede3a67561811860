"""What the model is asked: image labels, the radiology prompt template and its placeholders.

A prompt is sent as one user turn: a short fixed introduction, then every image immediately
followed by its label (``A1: axial, S 12.5 mm, sequence T1``), then the instruction made from the
template. Ollama's native API, which cannot interleave text and images in one message, gets each
image in a message of its own with its label as the text (:class:`~.dialects.OllamaDialect`);
:meth:`Prompt.flat_text` lists the labels in order for showing a prompt as text.

What is attached may differ from the slices cited (:attr:`Prompt.attachments`): contact sheets of
several slices when the server takes fewer images (:mod:`.packing`), and a context sheet of the
whole volume. Worked examples go before the question as earlier turns (:class:`Turn`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

from ..names import DEFAULT_LANGUAGE

#: The report prompt used when the user gives none. See :data:`PLACEHOLDERS`.
DEFAULT_TEMPLATE = """\
You are assisting a radiologist. The {image_count} images above are representative slices of one \
{modality} examination ({sequences}), {selection}; each image is followed by its ID.{stood_out}
Write a concise radiology report in {language} with exactly two sections:
Findings: the relevant observations, one per line. End each finding with the ID(s) of the image(s) \
that show it in square brackets, for example [{example_ids}].
Impression: a short summary of the most important findings, also citing image IDs.
Describe only what is visible in these images. If the images do not allow an assessment, say so."""

#: Placeholders a template may use, written ``{name}``; ``{{`` and ``}}`` give literal braces.
PLACEHOLDERS = {
    "image_count": "number of images sent",
    "image_ids": "IDs of all images, comma-separated (A1, A2, C1, ...)",
    "image_list": "one line per image: ID, plane, position and sequence",
    "example_ids": "the first one or two IDs, for use in an example citation",
    "modality": "CT or MRI (detected or chosen)",
    "sequences": "names of the sequences (volumes) the images come from",
    "planes": "planes shown (axial, coronal, sagittal)",
    "language": "report language chosen by the user",
    "selection": "how the slices were chosen: 'selected automatically', or 'chosen to show the segment ...' "
                 "when a segmentation or points guided the selection",
    "guide": "what guided the selection, e.g. the segment 'label 1' or the marked point (empty when nothing did)",
    "stood_out": "in findings mode, which planes show a candidate finding and which only representative anatomy "
                 "(sentences starting with a space; empty in representative mode and for guided slices)",
}

#: Said after an image's label when something stood out in its plane (findings mode).
STOOD_OUT_LABEL = "something stood out in this plane: this slice may show a candidate finding"
#: Said after an image's label when nothing stood out in its plane: the slice is the plane's typical anatomy.
NOTHING_STOOD_OUT_LABEL = "nothing stood out in this plane; this slice is representative anatomy"

INTRO = ("Images of one {modality} examination follow. Each image is followed by its ID, its plane, "
         "the slice position in patient RAS coordinates (mm) and its sequence.")

# Letter naming the positive and negative direction along each plane's normal (RAS convention).
_DIRECTIONS = {"axial": ("S", "I"), "coronal": ("A", "P"), "sagittal": ("R", "L")}
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")


@dataclass
class PromptImage:
    """One image sent to the model.

    Attributes
    ----------
    id : str
        Short ID cited in the report: plane letter and rank (``A1``), plus ``-n`` for the n-th
        sequence when several are sent (``A1-2``).
    plane : str
    position_mm : float
        RAS coordinate of the slice along the plane normal.
    sequence : str
        Name of the volume the image comes from.
    png : bytes
        The encoded image.
    meta : dict
        Everything else worth recording (rank, index, size, window, ...).
    """

    id: str
    plane: str
    position_mm: float
    sequence: str
    png: bytes = field(repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def label(self) -> str:
        """Text placed right after the image, e.g. ``A1: axial, S 12.5 mm, sequence T1``."""
        text = f"{self.id}: {self.plane}, {format_position(self.plane, self.position_mm)}"
        text = f"{text}, sequence {self.sequence}" if self.sequence else text
        shows = (self.meta.get("guide") or {}).get("phrase")
        if shows:
            return f"{text}, showing {shows}"
        return f"{text}; {_standing_label(self.stood_out)}" if self.stood_out is not None else text

    @property
    def stood_out(self) -> bool | None:
        """Whether anything stood out in this image's plane (findings mode); None for representative mode,
        guided slices and images without a selection behind them."""
        if self.meta.get("guide") is not None:
            return None
        return self.meta.get("stood_out")


def _standing_label(stood_out: bool) -> str:
    return STOOD_OUT_LABEL if stood_out else NOTHING_STOOD_OUT_LABEL


@dataclass
class Attachment:
    """An image sent that is not one slice: a contact sheet of several slices, or the context sheet.

    Attributes
    ----------
    label : str
        Text placed right after the image (what it shows, tile by tile).
    png : bytes
    meta : dict
        Kind ("sheet" or "context"), the IDs of its tiles, size, ...
    """

    label: str
    png: bytes = field(repr=False)
    meta: dict = field(default_factory=dict)


@dataclass
class Turn:
    """An earlier exchange sent before the question (a worked example): images with their labels, and the
    answer the model is shown as its own (the example's report)."""

    intro: str
    attachments: list
    answer: str
    meta: dict = field(default_factory=dict)

    def label_list(self) -> str:
        return _label_list(self.attachments)

    def flat_text(self) -> str:
        return f"{self.intro}\nThe images, in the order attached:\n{self.label_list()}"


@dataclass
class Prompt:
    """A complete request: introduction, labelled images (in order) and instruction.

    ``images`` are the slices the report may cite; ``attachments`` what is attached to the question
    (the slices themselves, or contact sheets of them, and a context sheet), in order; ``turns`` the
    worked examples sent before it.
    """

    intro: str
    images: list
    instruction: str
    attachments: list | None = None
    turns: list = field(default_factory=list)

    def __post_init__(self):
        if self.attachments is None:
            self.attachments = list(self.images)

    def label_list(self) -> str:
        """The image labels as numbered lines, for protocols that cannot interleave them."""
        return _label_list(self.attachments)

    def flat_text(self) -> str:
        """Introduction, label list and instruction as one text (images attached separately, in order)."""
        return f"{self.intro}\nThe images, in the order attached:\n{self.label_list()}\n\n{self.instruction}"

    def image_count(self) -> int:
        """Images attached to the whole request, examples included."""
        return len(self.attachments) + sum(len(turn.attachments) for turn in self.turns)


#: The assistant's answer after each image sent over several turns.
ACKNOWLEDGEMENT = "Noted."


def spread_over_turns(prompt: Prompt) -> Prompt:
    """``prompt`` with its attachments one per user message (each acknowledged), the question last.

    The first message keeps the introduction; earlier turns (worked examples) stay first.
    """
    count = len(prompt.attachments)
    turns = [Turn((f"{prompt.intro}\n" if n == 1 else "") + f"Image {n} of {count}:", [attachment], ACKNOWLEDGEMENT,
                  {"kind": "image turn"})
             for n, attachment in enumerate(prompt.attachments, 1)]
    intro = f"The {count} images of this examination are in the messages above."
    return replace(prompt, intro=intro, attachments=[], turns=[*prompt.turns, *turns])


def _label_list(attachments) -> str:
    return "\n".join(f"Image {n}: {image.label}" for n, image in enumerate(attachments, 1))


def format_position(plane: str, position_mm: float) -> str:
    """Slice position as Slicer writes it, e.g. ``S 12.5 mm`` (axial), ``P 3.0 mm`` (coronal)."""
    positive, negative = _DIRECTIONS[plane]
    letter = positive if position_mm >= 0 else negative
    return f"{letter} {abs(position_mm):.1f} mm"


def render_template(template: str, values: dict) -> str:
    """Fill ``{placeholder}`` fields of a template.

    Unlike :meth:`str.format`, other braces are left alone only when doubled, and an unknown
    name is reported with the list of valid ones (a typo should not silently reach the model).

    Raises
    ------
    ValueError
        For an unknown or empty placeholder.
    """
    def substitute(match):
        token = match.group(0)
        if token in ("{{", "}}"):
            return token[0]
        name = match.group(1).strip()
        if name not in values:
            raise ValueError(f"unknown placeholder {token} in the prompt template; "
                             f"use {', '.join('{' + key + '}' for key in PLACEHOLDERS)}")
        return str(values[name])

    return _PLACEHOLDER.sub(substitute, template)


def selection_phrase(guided_by: str = "", then: str = "") -> str:
    """How the slices were chosen, for the prompt: ``selected automatically`` or ``chosen to show the segment
    'liver'`` (``..., and automatically selected slices elsewhere`` when unsupervised picks follow)."""
    if not guided_by:
        return "selected automatically"
    phrase = f"chosen to show {guided_by}"
    return phrase + (", and automatically selected slices elsewhere" if then else "")


def stood_out_phrase(images: list) -> str:
    """The ``{stood_out}`` sentences: which planes of ``images`` show a candidate finding and which only
    representative anatomy, and, when nothing stood out anywhere, that no lesion should be assumed.

    Empty when no image carries the answer (representative mode, guided slices), so those prompts are unchanged.
    """
    standing = {}
    for image in images:
        if image.stood_out is not None:
            standing.setdefault(image.plane, bool(image.stood_out))
    if not standing:
        return ""
    found = [plane for plane, stood_out in standing.items() if stood_out]
    typical = [plane for plane, stood_out in standing.items() if not stood_out]
    if not found:
        # Said plainly: a model shown slices "selected" for it tends to find a lesion in them.
        return (" Nothing stood out to the automatic selection in any plane: the images show representative "
                "anatomy, not a detected finding. Do not assume a lesion; if the images look normal, say so.")
    text = (f" Something stood out to the automatic selection in {_planes_words(found, len(standing))}: "
            f"{'the' if not typical else 'their' if len(found) > 1 else 'its'} images show a candidate finding, "
            "which may still prove normal.")
    if typical:
        text += (f" Nothing stood out in {_planes_words(typical, len(standing))}: "
                 f"{'their' if len(typical) > 1 else 'its'} images show representative anatomy, not a finding.")
    return text


def _planes_words(planes: list, total: int) -> str:
    """``every plane``, ``the sagittal plane`` or ``the axial and coronal planes``."""
    if len(planes) == total and total > 1:
        return "every plane"
    if len(planes) == 1:
        return f"the {planes[0]} plane"
    return f"the {', '.join(planes[:-1])} and {planes[-1]} planes"


def build_prompt(images: list, template: str | None = None, language: str = DEFAULT_LANGUAGE,
                 modality: str = "MRI", guided_by: str = "", then: str = "") -> Prompt:
    """Assemble the prompt for a list of :class:`PromptImage` (already in sending order).

    Parameters
    ----------
    images : list of PromptImage
    template : str, optional
        Instruction template with :data:`PLACEHOLDERS`; :data:`DEFAULT_TEMPLATE` if None or blank.
    language : str
        Language the report should be written in.
    modality : str
        "CT", "MRI" or a combination such as "CT and MRI".
    guided_by, then : str
        What guided the selection (``the segment 'label 1'``), and the unsupervised mode of picks sent after the
        guided ones (combined mode); empty for an unsupervised selection.
    """
    if not images:
        raise ValueError("no images to describe")
    sequences = list(dict.fromkeys(image.sequence for image in images if image.sequence))
    planes = list(dict.fromkeys(image.plane for image in images))
    ids = [image.id for image in images]
    values = {
        "image_count": len(images),
        "image_ids": ", ".join(ids),
        "image_list": "\n".join(image.label for image in images),
        "example_ids": ", ".join(ids[:2]),
        "modality": modality,
        "sequences": ", ".join(sequences) if sequences else "one sequence",
        "planes": ", ".join(planes),
        "language": language.strip() or DEFAULT_LANGUAGE,
        "selection": selection_phrase(guided_by, then),
        "guide": guided_by,
        "stood_out": stood_out_phrase(images),
    }
    text = template if template and template.strip() else DEFAULT_TEMPLATE
    return Prompt(intro=render_template(INTRO, values), images=list(images),
                  instruction=render_template(text, values).strip())
