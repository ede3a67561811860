"""Static checks of the panel code (VoteMI.py, VoteMISlicerLib, the .ui): every translated text is a literal that
Slicer's string extraction (lupdate) can read, and no colour is hard-coded (Slicer's dark theme would not match).

A text built at run time inside ``_()`` (an f-string, a variable) is missing from the translation catalogue and
shown in English whatever the language; ``_("... {name} ...").format(name=...)`` is extracted whole.
"""

from __future__ import annotations

import ast
import re
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

MODULE_DIR = Path(__file__).resolve().parents[1] / "VoteMI"
PANEL_SOURCES = [MODULE_DIR / "VoteMI.py", *sorted((MODULE_DIR / "VoteMISlicerLib").glob("*.py"))]
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VoteMI.ui"
#: Translation functions of slicer.i18n and the argument that holds the text.
TRANSLATORS = {"_": 0, "tr": 0, "translate": 1}
#: A colour written out: #rgb, #rrggbb, #aarrggbb, rgb(...), rgba(...), hsl(...), hsv(...).
COLOUR_CODE = re.compile(r"#(?:[0-9a-fA-F]{3}|[0-9a-fA-F]{6}|[0-9a-fA-F]{8})\b|\b(?:rgba?|hsla?|hsva?)\s*\(")
#: A named colour after a style sheet property (``color: red``); ``palette(...)`` is what is allowed.
NAMED_COLOUR = re.compile(
    r"(?:color|background|border[\w-]*)\s*:[^;\"]*\b(?:red|green|blue|black|white|gr[ae]y|orange|yellow|purple|"
    r"brown|pink|cyan|magenta|navy|maroon|olive|teal|silver|dark\w+|light\w+)\b", re.I)
#: Qt's fixed colours (``qt.Qt.red``, ``Qt.darkGray``, ...).
QT_COLOURS = {"red", "green", "blue", "black", "white", "gray", "darkGray", "lightGray", "cyan", "magenta",
              "yellow", "darkRed", "darkGreen", "darkBlue", "darkCyan", "darkMagenta", "darkYellow"}


def untranslatable_texts(source):
    """(line, what) of each translation call whose text is not one string literal."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in TRANSLATORS):
            continue
        position = TRANSLATORS[node.func.id]
        text = node.args[position] if len(node.args) > position else None
        if isinstance(text, ast.JoinedStr):
            found.append((node.lineno, "f-string inside %s()" % node.func.id))
        elif not (isinstance(text, ast.Constant) and isinstance(text.value, str)):
            found.append((node.lineno, "not a string literal inside %s()" % node.func.id))
    return found


def _is_colour(text):
    return bool(COLOUR_CODE.search(text) or NAMED_COLOUR.search(text))


def hard_coded_colours(source):
    """(line, what) of each colour in Python source: colour strings, QColor(...) and Qt's fixed colours."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and _is_colour(node.value):
            found.append((node.lineno, node.value))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "QColor":
            found.append((node.lineno, "QColor(...)"))
        elif isinstance(node, ast.Attribute) and node.attr in QT_COLOURS and getattr(node.value, "attr", "") == "Qt":
            found.append((node.lineno, "Qt." + node.attr))
    return found


def ui_colours(path):
    """Colours in the .ui: in style sheets, and any <color> (a palette written into the form)."""
    tree = ElementTree.parse(path)
    found = [("styleSheet", element.findtext("string") or "") for element in tree.iter("property")
             if element.get("name") == "styleSheet" and _is_colour(element.findtext("string") or "")]
    found += [("palette", "<color>") for _ in tree.iter("color")]
    return found


@pytest.mark.parametrize("bad, expected", [
    ('_(f"Saved to {path}")', "f-string inside _()"),
    ('_("Saved to " f"{path}")', "f-string inside _()"),
    ("_(status)", "not a string literal inside _()"),
    ('translate("ctx", name)', "not a string literal inside translate()"),
])
def test_the_check_finds_texts_lupdate_cannot_extract(bad, expected):
    assert untranslatable_texts(bad) == [(1, expected)]
    assert untranslatable_texts('_("Saved to {path}").format(path=path)') == []


@pytest.mark.parametrize("bad", ['label.styleSheet = "color: #b03a2e;"', 'x = "background: rgb(10, 20, 30)"',
                                 'x = "color: darkred"', "qt.QColor(200, 0, 0)", "brush = qt.Qt.red"])
def test_the_check_finds_hard_coded_colours(bad):
    assert hard_coded_colours(bad)
    assert hard_coded_colours('x = "color: palette(link); text-decoration: underline"') == []


def test_every_translated_text_of_the_panel_is_a_literal():
    problems = [f"{path.name}:{line}: {what}" for path in PANEL_SOURCES
                for line, what in untranslatable_texts(path.read_text(encoding="utf-8"))]
    assert not problems, problems


def test_the_panel_uses_palette_colours_only():
    problems = [f"{path.name}:{line}: {what}" for path in PANEL_SOURCES
                for line, what in hard_coded_colours(path.read_text(encoding="utf-8"))]
    problems += [f"{UI_FILE.name}: {where}: {what}" for where, what in ui_colours(UI_FILE)]
    assert not problems, problems
