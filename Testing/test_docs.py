"""README and docs/: the commands a new user copies are the ones CI runs, and every link leads somewhere."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEST_COMMAND = "bash Testing/run_tests.sh"


def _pages():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text):
    return re.sub(r"(?s)```.*?```", "", text)


def _slug(heading):
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_ci_runs_the_readmes_test_command():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"(?s)```bash\n(.*?)```", readme)
    assert any(block.strip() == TEST_COMMAND for block in blocks), "README has no test command block"
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    assert ci[-1] == TEST_COMMAND


def test_the_quick_start_installs_into_a_venv_and_runs_on_colin27():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = next(block.strip() for block in re.findall(r"(?s)```bash\n(.*?)```", readme)
                   if "votemi select" in block)
    assert "python3 -m venv .venv" in command and ".venv/bin/pip install -e ." in command  # PEP 668 systems
    assert "/usr/share/mricron/templates/ch2.nii.gz" in command and "mricron-data" in command


def test_every_relative_link_and_anchor_resolves():
    anchors = {page.resolve(): {_slug(heading) for heading in re.findall(r"(?m)^#+ (.*)$", _prose(page.read_text(encoding="utf-8")))}
               for page in _pages()}
    broken = []
    for page in _pages():
        for link in re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", _prose(page.read_text(encoding="utf-8"))):
            if re.match(r"^(https?:|mailto:)", link):
                continue
            path, _, anchor = link.partition("#")
            target = (page.parent / path).resolve() if path else page.resolve()
            if not target.exists():
                broken.append(f"{page.name}: {link} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in anchors.get(target, set()):
                broken.append(f"{page.name}: {link} (no such heading)")
    assert not broken, broken


def test_the_readme_is_a_front_page_the_rest_is_in_docs():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) < 250, f"README has {len(lines)} lines: move detail into docs/"
    headings = [line for line in lines if line.startswith("## ")]
    assert headings[:3] == ["## Install in 3D Slicer", "## Use it", "## Command line"]
