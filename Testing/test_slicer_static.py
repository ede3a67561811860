"""Static checks of the Slicer extension: packaging lists, UI names, catalog entry, icons, module source."""

from __future__ import annotations

import ast
import json
import re
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODULE_DIR = REPO / "VoteMI"
MODULE_SOURCE = MODULE_DIR / "VoteMI.py"
UI_FILE = MODULE_DIR / "Resources" / "UI" / "VoteMI.ui"
#: Categories the ExtensionsIndex accepts (Slicer/ExtensionsIndex scripts/check_description_files.py).
ACCEPTED_CATEGORIES = {
    "Active Learning", "Analysis", "Auto3dgm", "BigImage", "Cardiac", "Chest Imaging Platform", "Conda",
    "Converters", "DICOM", "DSCI", "Developer Tools", "Diffusion", "Examples", "Exporter", "FTV Segmentation",
    "Filtering", "Filtering.Morphology", "Filtering.Vesselness", "Holographic Display", "IGT", "Informatics",
    "Netstim", "Neuroimaging", "Nuclear Medicine", "Orthodontics", "Osteotomy Planning", "Otolaryngology",
    "Photogrammetry", "Pipelines", "Planning", "Printing", "Quantification", "Radiotherapy", "Registration",
    "Remote", "Rendering", "SPHARM", "Segmentation", "Sequences", "Shape Analysis", "Shape Regression",
    "Shape Visualization", "Simulation", "SlicerCMF", "SlicerMorph", "Spectral Imaging", "Supervisely",
    "Surface Models", "SurfaceLearner", "Tomographic Reconstruction", "Tracking", "Tractography", "Training",
    "Ultrasound", "Utilities", "Vascular Modeling Toolkit", "Virtual Reality", "VisSimTools", "Web System Tools",
    "Wizards",
}
#: Modules the Slicer application provides besides the standard library.
SLICER_MODULES = {"slicer", "qt", "ctk", "vtk", "__main__"}
#: The one engine module VoteMI.py may import at file scope: the words it shares with the engine (defaults).
SHARED_NAMES_MODULE = "VoteMILib.names"


def _cmake_set(text: str, variable: str) -> list:
    match = re.search(rf"set\(\s*{variable}\s+(.*?)\)", text, re.S)
    assert match, f"set({variable} ...) not found"
    return match.group(1).split()


def _cmake_value(text: str, variable: str) -> str:
    match = re.search(rf'set\(\s*{variable}\s+"([^"]*)"\s*\)', text)
    assert match, f"set({variable} \"...\") not found"
    return match.group(1)


def _module_files(relative_to: Path) -> set:
    skipped = {"__pycache__"}
    return {path.relative_to(relative_to).as_posix() for path in relative_to.rglob("*")
            if path.is_file() and not skipped & set(path.parts) and not any(p.endswith(".egg-info") for p in path.parts)
            and path.suffix not in (".pyc",) and path.name != "CMakeLists.txt"}


def test_every_module_file_is_packaged():
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = {entry.replace("${MODULE_NAME}", "VoteMI")
              for entry in _cmake_set(cmake, "MODULE_PYTHON_SCRIPTS") + _cmake_set(cmake, "MODULE_PYTHON_RESOURCES")}
    present = _module_files(MODULE_DIR)
    assert present - listed == set(), "files under VoteMI/ missing from VoteMI/CMakeLists.txt (not packaged)"
    assert listed - present == set(), "VoteMI/CMakeLists.txt lists files that do not exist"
    assert "WITH_GENERIC_TESTS" in cmake
    assert re.search(r"slicer_add_python_unittest\(\s*SCRIPT\s+\$\{MODULE_NAME\}\.py\s*\)", cmake)


def test_ui_has_every_widget_the_module_uses():
    # The panel's helpers in VoteMISlicerLib (server status, review) hold the same ui as the widget.
    sources = [MODULE_SOURCE, *sorted((MODULE_DIR / "VoteMISlicerLib").glob("*.py"))]
    used = {name for path in sources for name in re.findall(r"self\.ui\.(\w+)", path.read_text(encoding="utf-8"))}
    tree = ElementTree.parse(UI_FILE)
    names = {widget.get("name") for widget in tree.iter("widget")}
    assert used, "the module uses no self.ui widgets?"
    assert used - names == set(), "widgets used by the panel but missing from VoteMI.ui"


def test_ui_parameter_names_match_the_parameter_node():
    module = ast.parse(MODULE_SOURCE.read_text(encoding="utf-8"))
    wrapper = next(node for node in module.body
                   if isinstance(node, ast.ClassDef) and node.name == "VoteMIParameterNode")
    fields = {statement.target.id for statement in wrapper.body if isinstance(statement, ast.AnnAssign)}
    tree = ElementTree.parse(UI_FILE)
    bound = {}
    for widget in tree.iter("widget"):
        for prop in widget.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.find("string").text] = widget.get("class")
    text_parameters = dict(_widget_class_constant(module, "TEXT_PARAMETERS"))
    classes = {widget.get("name"): widget.get("class") for widget in tree.iter("widget")}
    assert set(bound) <= fields, f"UI binds unknown parameters: {set(bound) - fields}"
    assert not set(bound) & set(text_parameters.values()), "a text parameter is bound twice"
    connected = set(bound) | set(text_parameters.values())
    assert fields <= connected, f"parameters without a widget: {fields - connected}"
    # The parameter node wrapper connects exact widget classes only; text widgets are connected by the
    # panel, because the wrapper rewrites them (cursor and all) on every change of the node.
    allowed = {"qMRMLNodeComboBox", "QCheckBox", "QSpinBox", "QComboBox"}
    assert set(bound.values()) <= allowed
    assert {classes[name] for name in text_parameters} <= {"QLineEdit", "QTextEdit", "QPlainTextEdit"}


def _widget_class_constant(module, name):
    widget = next(node for node in module.body if isinstance(node, ast.ClassDef) and node.name == "VoteMIWidget")
    assignment = next(statement for statement in widget.body if isinstance(statement, ast.Assign)
                      and any(getattr(target, "id", "") == name for target in statement.targets))
    return ast.literal_eval(assignment.value)


def test_ui_custom_widgets_are_declared():
    tree = ElementTree.parse(UI_FILE)
    classes = {widget.get("class") for widget in tree.iter("widget")}
    declared = {custom.findtext("class") for custom in tree.iter("customwidget")}
    custom = {name for name in classes if name.startswith(("ctk", "qMRML", "qSlicer"))}
    assert custom <= declared


def test_catalog_entry_agrees_with_cmake():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    entry = json.loads((REPO / "VoteMI.json").read_text(encoding="utf-8"))
    project = re.search(r"project\(\s*([^\s)]+)", cmake).group(1)
    assert project == "VoteMI" == (REPO / "VoteMI.json").stem
    category = _cmake_value(cmake, "EXTENSION_CATEGORY")
    assert entry["category"] == category
    assert category in ACCEPTED_CATEGORIES
    depends = _cmake_value(cmake, "EXTENSION_DEPENDS")
    assert (entry.get("build_dependencies") or []) == ([] if depends == "NA" else depends.split())
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert entry["scm_url"].startswith("https://")
    repository = entry["scm_url"].rstrip("/").split("/")[-1].removesuffix(".git")
    assert repository.startswith("Slicer") and not project.startswith("Slicer")
    for variable in ("EXTENSION_HOMEPAGE", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION"):
        assert _cmake_value(cmake, variable).strip()
    assert re.search(r"add_subdirectory\(\s*VoteMI\s*\)", cmake)
    for line in ("include(${Slicer_EXTENSION_GENERATE_CONFIG})", "include(${Slicer_EXTENSION_CPACK})"):
        assert line in cmake


def test_icon_and_screenshot_urls_point_at_png_files_here():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    urls = [_cmake_value(cmake, "EXTENSION_ICONURL")] + _cmake_value(cmake, "EXTENSION_SCREENSHOTURLS").split()
    for url in urls:
        assert url.startswith("https://raw.githubusercontent.com/VoteMI/SlicerVoteMI/") and url.endswith(".png")
        local = REPO / url.split("/SlicerVoteMI/", 1)[1].split("/", 1)[1]
        assert local.is_file(), f"{url} names {local}, which is not in the repository"


@pytest.mark.parametrize("path", ["VoteMI.png", "VoteMI/Resources/Icons/VoteMI.png"])
def test_icons_are_128_pixel_png(path):
    from PIL import Image

    with Image.open(REPO / path) as image:
        assert image.format == "PNG"
        assert image.size == (128, 128)


def test_screenshot_is_a_real_rendering():
    from PIL import Image

    with Image.open(REPO / "Screenshot01.png") as image:
        assert image.format == "PNG"
        assert image.width >= 600 and image.height >= 200
        import numpy as np

        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 200, "the screenshot looks blank"


def test_license_is_apache_2():
    text = (REPO / "LICENSE.txt").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION" in text


def _file_scope_imports(tree):
    """(line, module) of every import at file scope; a relative import as ``.name``."""
    for statement in tree.body:
        if isinstance(statement, ast.Import):
            yield from ((statement.lineno, alias.name) for alias in statement.names)
        elif isinstance(statement, ast.ImportFrom):
            yield statement.lineno, "." * statement.level + (statement.module or "")


def _check_no_work_at_file_scope(tree):
    """Only imports, constants, classes and functions at file scope: loading the file does nothing."""
    for statement in tree.body:
        allowed = (ast.Import, ast.ImportFrom, ast.ClassDef, ast.FunctionDef, ast.Assign, ast.AnnAssign, ast.Expr)
        assert isinstance(statement, allowed), f"line {statement.lineno}: statement at file scope"
        if isinstance(statement, ast.Expr):
            assert isinstance(statement.value, ast.Constant), f"line {statement.lineno}: call at file scope"
        if isinstance(statement, (ast.Assign, ast.AnnAssign)):
            value = statement.value
            literal = value is None or isinstance(value, ast.Constant) or (
                isinstance(value, ast.Tuple) and all(isinstance(item, ast.Constant) for item in value.elts))
            assert literal, f"line {statement.lineno}: computed constant"


def test_module_source_compiles_for_python_310_and_imports_only_slicer_at_file_scope():
    source = MODULE_SOURCE.read_text(encoding="utf-8")
    tree = ast.parse(source, filename=str(MODULE_SOURCE), feature_version=(3, 10))
    compile(tree, str(MODULE_SOURCE), "exec")
    stdlib = set(sys.stdlib_module_names)
    for line, module in _file_scope_imports(tree):
        if module == SHARED_NAMES_MODULE:
            continue  # checked below: as light and as old-Python-proof as the module file itself
        root = module.split(".")[0]
        assert root in stdlib or root in SLICER_MODULES, (
            f"line {line}: '{root}' imported at file scope; import it where it is used")
    _check_no_work_at_file_scope(tree)


SLICER_LIB = MODULE_DIR / "VoteMISlicerLib"


@pytest.mark.parametrize("path", sorted(SLICER_LIB.glob("*.py")), ids=lambda path: path.name)
def test_slicer_side_package_imports_only_slicer_the_engine_and_itself_at_file_scope(path):
    """VoteMISlicerLib is imported when the panel or a script first needs it, in a Slicer new enough to run
    VoteMI (so Python 3.10 syntax); at file scope it may import Slicer, the engine and itself, never a package
    installed on first use (highdicom, transformers, ...) or the module file VoteMI.py (no import circle)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 10))
    allowed = set(sys.stdlib_module_names) | SLICER_MODULES | {"VoteMILib", "VoteMISlicerLib", ""}
    for line, module in _file_scope_imports(tree):
        assert module.lstrip(".").split(".")[0] in allowed, f"{path.name} line {line}: '{module}' at file scope"
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert "VoteMI" not in [name.split(".")[0] for name in names], f"{path.name} imports the module file"
    _check_no_work_at_file_scope(tree)


def test_the_engine_never_imports_the_slicer_side():
    for path in sorted((MODULE_DIR / "VoteMILib").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            if isinstance(node, ast.Import):
                roots = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                roots = [(node.module or "").split(".")[0]]
            else:
                continue
            assert not {"VoteMI", "VoteMISlicerLib", "VoteMISelfTestLib"} & set(roots), f"{path}:{node.lineno}"


#: What only the MRML layer (VoteMILib/mrml/) may know of the report node: its attributes and its text.
REPORT_FORMAT = re.compile(r"report_attribute|mrml\.\w+_ATTRIBUTE\b|_ATTRIBUTE_PREFIX|[\"']VoteMI\.(Report|Findings|"
                           r"WrittenSHA1)|\.(Get|Set)Text\(")


@pytest.mark.parametrize("path", [MODULE_SOURCE, *sorted(SLICER_LIB.glob("*.py"))], ids=lambda path: path.name)
def test_the_report_node_format_lives_only_in_the_mrml_layer(path):
    found = [f"line {number}: {line.strip()}" for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if REPORT_FORMAT.search(line)]
    assert not found, f"{path.name} reads or writes the report node itself (use VoteMILib.mrml): {found}"


def test_module_file_reads_on_python_39_so_old_slicers_can_say_why_it_does_not_run():
    ast.parse(MODULE_SOURCE.read_text(encoding="utf-8"), filename=str(MODULE_SOURCE), feature_version=(3, 9))


def test_module_classes_and_metadata():
    source = MODULE_SOURCE.read_text(encoding="utf-8")
    tree = ast.parse(source)
    classes = {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}
    for name in ("VoteMI", "VoteMIParameterNode", "VoteMIWidget", "VoteMILogic", "VoteMITest"):
        assert name in classes, f"class {name} missing"
    decorators = [ast.unparse(d) for d in classes["VoteMIParameterNode"].decorator_list]
    assert decorators == ["parameterNodeWrapper"]
    assert "def runTest" in ast.get_source_segment(source, classes["VoteMITest"])
    # Generic tests need non-empty categories, contributors and acknowledgement.
    category = re.search(r'self\.parent\.categories = \[translate\("qSlicerAbstractCoreModule", "([^"]+)"\)\]',
                         source).group(1)
    assert category in ACCEPTED_CATEGORIES
    assert re.search(r"self\.parent\.contributors = \[\"[^\"]+\"\]", source)
    assert "acknowledgementText" in source and "Vote-MI" in source
    assert "README_URL" in source and "github.com/VoteMI/SlicerVoteMI" in source
    assert "tryWithErrorDisplay" in source and "QTimer" in source and "QSettings" in source


def test_the_shared_names_module_loads_wherever_the_module_file_does():
    """VoteMI.py imports VoteMILib.names at file scope: it must parse for Python 3.9 and import only the stdlib."""
    path = MODULE_SOURCE.parent / "VoteMILib" / "names.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path), feature_version=(3, 9))
    for statement in ast.walk(tree):
        if isinstance(statement, ast.Import):
            roots = [alias.name.split(".")[0] for alias in statement.names]
        elif isinstance(statement, ast.ImportFrom):
            roots = [(statement.module or "").split(".")[0]] if statement.level == 0 else ["<relative>"]
        else:
            continue
        assert all(root in sys.stdlib_module_names for root in roots), f"line {statement.lineno}: {roots}"
