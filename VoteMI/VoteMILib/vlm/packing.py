"""Fitting the slices to what a server accepts: labelled contact sheets, and a context sheet of the whole volume.

A contact sheet is one image holding several slices as tiles, each with its ID, plane and position
burnt into its top-left corner, so the model can cite the tile it describes even though it got one
image; the text after the sheet lists the same labels, tile by tile. Sheets keep the size of a single
image (``long_side``, e.g. 896 px for Gemma 3 based models), so the tiles get smaller as they get more.

How the slices are sent (:data:`PACK_CHOICES`):

* ``auto``: one image per slice when the server takes them all, otherwise as few sheets as fit:
  one sheet per plane when the planes fit, else the slices split in order over the sheets allowed;
* ``none``: one image per slice, refused before sending when the server takes fewer;
* ``grid``: sheets always (one per plane, or fewer when the server takes fewer images);
* ``turns``: one image per slice, each in its own user message (acknowledged by a short assistant turn),
  the question last: for servers that limit images per message rather than per request (Ollama vision
  models taking "a single image per message"); refused before sending when the request cannot hold them.
"""

from __future__ import annotations

import io
import math

import numpy as np

from ..geometry import PLANES, plane_geometry
from .errors import VLMError
from .imaging import render_rgb
from .prompts import Attachment, format_position

PACK_CHOICES = ("auto", "none", "grid", "turns")
#: Smallest tile worth sending: below this the slice cannot be read (and its label covers it).
MIN_TILE_PX = 64
_LABEL_FRACTION = 0.075  # label height as a fraction of the tile side


def _font(pixels: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=max(8, pixels))
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _tile(png: bytes, side: int, text: str):
    """One slice fitted into a black ``side`` x ``side`` square, its label burnt into the top-left corner."""
    from PIL import Image, ImageDraw

    source = Image.open(io.BytesIO(png)).convert("RGB")
    scale = side / max(source.size)
    size = (max(1, round(source.size[0] * scale)), max(1, round(source.size[1] * scale)))
    tile = Image.new("RGB", (side, side))
    tile.paste(source.resize(size, Image.Resampling.LANCZOS), ((side - size[0]) // 2, (side - size[1]) // 2))
    draw = ImageDraw.Draw(tile)
    font = _font(round(side * _LABEL_FRACTION))
    left, top, right, bottom = draw.textbbox((4, 3), text, font=font)
    draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))  # legible over bright tissue
    draw.text((4, 3), text, fill=(255, 255, 0), font=font)
    return tile


def tile_text(image) -> str:
    """What is burnt into a tile: ``A1 axial S 12.5 mm`` (plus the sequence when several are sent)."""
    text = f"{image.id} {image.plane} {format_position(image.plane, image.position_mm)}"
    return f"{text} {image.sequence}" if image.meta.get("sequence_number", 1) > 1 else text


def contact_sheet(pngs_and_texts, long_side: int) -> tuple:
    """Tiles in a near-square grid, left to right, top to bottom; returns (png bytes, (width, height)).

    Raises
    ------
    VLMError
        When the tiles would be too small to read (more slices than fit ``long_side``).
    """
    from PIL import Image

    count = len(pngs_and_texts)
    columns = math.ceil(math.sqrt(count))
    rows = math.ceil(count / columns)
    side = int(long_side) // columns
    if side < MIN_TILE_PX:
        raise VLMError(f"{count} slices in one {long_side} px contact sheet would be tiles of {side} px; "
                       f"send fewer slices or a larger --long-side")
    sheet = Image.new("RGB", (columns * side, rows * side))
    for n, (png, text) in enumerate(pngs_and_texts):
        sheet.paste(_tile(png, side, text), ((n % columns) * side, (n // columns) * side))
    out = io.BytesIO()
    sheet.save(out, format="PNG")
    return out.getvalue(), sheet.size


def sheet_of(images, long_side: int, number: int, total: int) -> Attachment:
    """One contact sheet of slices (:class:`~VoteMILib.vlm.prompts.PromptImage`), labelled tile by tile."""
    png, size = contact_sheet([(image.png, tile_text(image)) for image in images], long_side)
    tiles = "; ".join(image.label for image in images)
    label = (f"Contact sheet {number} of {total}, {len(images)} slices, tiles left to right then top to bottom, "
             f"each with its ID burnt in: {tiles}")
    return Attachment(label, png, {"kind": "sheet", "ids": [image.id for image in images], "width": size[0],
                                   "height": size[1]})


def sheet_groups(images, budget: int, always: bool = False) -> list:
    """The slices grouped into the images to send: one group per slice when they fit (unless ``always``),
    else one group per plane when the planes fit, else the slices split in order over ``budget`` groups."""
    if budget < 1:
        raise VLMError("no room for any image in the request")
    if len(images) <= budget and not always:
        return [[image] for image in images]
    planes = list(dict.fromkeys(image.plane for image in images))
    if len(planes) <= budget:
        return [[image for image in images if image.plane == plane] for plane in planes]
    per_sheet = math.ceil(len(images) / budget)
    return [images[n:n + per_sheet] for n in range(0, len(images), per_sheet)]


def fit_images(images, budget: int | None, pack: str, long_side: int, what: str = "the slices") -> list:
    """What to attach for ``images``: the images themselves, or contact sheets of them.

    Parameters
    ----------
    images : list of PromptImage
    budget : int or None
        Images the server takes for these slices; None: no known limit.
    pack : {"auto", "none", "grid"}
    long_side : int
        Size of each sheet.

    Raises
    ------
    VLMError
        ``pack`` "none" with more images than ``budget``, or tiles too small to read.
    """
    if pack not in PACK_CHOICES:
        raise VLMError(f"unknown packing '{pack}'; choose {', '.join(PACK_CHOICES)}")
    limit = len(images) if budget is None else int(budget)
    if pack in ("none", "turns") or (pack == "auto" and len(images) <= limit):
        if len(images) > limit:
            over = " even one per message" if pack == "turns" else ""
            raise VLMError(f"the server takes {limit} image(s) per request{over} and {what} are {len(images)} "
                           "images; use --pack auto or grid to send them as contact sheets, or send fewer slices")
        return list(images)
    groups = sheet_groups(list(images), max(1, min(limit, len(images))), always=True)
    return [sheet_of(group, long_side, n, len(groups)) for n, group in enumerate(groups, 1)]


def acquisition_plane(volume) -> str:
    """The plane the scan was acquired in: the one whose slices run along the volume's K axis."""
    for plane in PLANES:
        if plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane).ijk_axis == 2:
            return plane
    return "axial"


def context_sheet(volume, count: int, windowing, long_side: int) -> Attachment:
    """One sheet of ``count`` evenly spaced slices of the acquisition plane, labelled as context (not citable).

    The slices are taken at the centres of ``count`` equal parts of the volume, so neither edge
    slice (often empty) is used.
    """
    if int(count) < 2:
        raise VLMError("--context needs at least 2 slices")
    plane = acquisition_plane(volume)
    geometry = plane_geometry(volume.ijk_to_ras, volume.size_ijk, plane)
    count = min(int(count), geometry.count)
    picks = np.unique(((np.arange(count) + 0.5) * geometry.count / count).astype(int))
    side = int(long_side) // math.ceil(math.sqrt(len(picks)))
    pngs = []
    for n, index in enumerate(picks, 1):
        image = render_rgb(volume, plane, int(index), windowing, max(side, 32))
        out = io.BytesIO()
        image.save(out, format="PNG")
        pngs.append((out.getvalue(), f"context {n} {format_position(plane, geometry.positions_mm[index])}"))
    png, size = contact_sheet(pngs, long_side)
    first, last = geometry.positions_mm[picks[0]], geometry.positions_mm[picks[-1]]
    label = (f"Context, not for citing: {len(picks)} evenly spaced {plane} slices of the whole volume from "
             f"{format_position(plane, first)} to {format_position(plane, last)}, tiles left to right then top "
             "to bottom; use it to place the cited images in the whole scan")
    return Attachment(label, png, {"kind": "context", "plane": plane, "count": int(len(picks)),
                                   "positions_mm": [round(float(geometry.positions_mm[i]), 3) for i in picks],
                                   "width": size[0], "height": size[1]})


#: Characters per token when estimating a prompt's text (fewer than most tokenizers average, so the
#: estimate errs high: a context a little too large costs memory, one too small loses images silently).
CHARS_PER_TOKEN_ESTIMATE = 3
#: Prompt tokens per image when no probe measured them: MedGemma's (Gemma 3) 256 image tokens.
DEFAULT_TOKENS_PER_IMAGE = 256
# Tokens a chat template adds around each message (role markers, separators), estimated high.
_TOKENS_PER_MESSAGE = 8
# Ollama's num_ctx is rounded up to a multiple of this.
_CTX_STEP = 1024


def prompt_text_chars(prompt) -> int:
    """Characters of text in ``prompt`` as sent: introduction, labels, instruction, earlier turns and answers."""
    turns = sum(len(turn.flat_text()) + len(turn.answer) for turn in prompt.turns)
    return len(prompt.flat_text()) + turns


def estimate_prompt_tokens(prompt, tokens_per_image: float, max_tokens: int, chars_per_token: float | None = None
                           ) -> int:
    """Tokens a request needs in the model's context: its text, its images and the answer's ``max_tokens``.

    Parameters
    ----------
    prompt : Prompt
    tokens_per_image : float
        Prompt tokens one image adds (measured by the probe, else :data:`DEFAULT_TOKENS_PER_IMAGE`).
    max_tokens : int
        Longest answer asked for.
    chars_per_token : float, optional
        The tokenizer's characters per token as the probe measured them; text is counted 25 % high with
        them (labels hold more digits than the probe's text); :data:`CHARS_PER_TOKEN_ESTIMATE` without.
    """
    messages = 2 * len(prompt.turns) + 1 + len(prompt.attachments) + 2  # image messages (Ollama), intro, question
    per_token = chars_per_token / 1.25 if chars_per_token else CHARS_PER_TOKEN_ESTIMATE
    text = math.ceil(prompt_text_chars(prompt) / per_token) + _TOKENS_PER_MESSAGE * messages
    return int(text + math.ceil(prompt.image_count() * float(tokens_per_image)) + int(max_tokens))


def context_to_request(needed: int, least: int | None, context_length: int | None) -> int:
    """Ollama's ``num_ctx`` for a request needing ``needed`` tokens: at least ``least``, rounded up to 1024,
    never above the model's ``context_length`` when known."""
    size = max(int(least or 0), math.ceil(needed / _CTX_STEP) * _CTX_STEP)
    return min(size, int(context_length)) if context_length else size
