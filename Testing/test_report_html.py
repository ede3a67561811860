"""``votemi describe --html``: one self-contained page, each finding beside its cited slices."""

import base64
import io
import json
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
from PIL import Image

from vlm_fixtures import ScriptedServer, complete_json
from VoteMILib.vlm import NOTICE, Report
from VoteMILib.vlm.html_export import report_html

ANSWER = """Findings:
- Bright blob in the middle <script>alert(1)</script> [A1, C1].
- Something on a slice never sent [S7].
Impression: A blob [A1]."""


@pytest.fixture(scope="module")
def described(image_path, tmp_path_factory):
    folder = tmp_path_factory.mktemp("html")
    with ScriptedServer() as server:
        server.script.append(complete_json(ANSWER))
        done = subprocess.run([sys.executable, "-m", "VoteMILib.cli", "describe", image_path, "--server", server.url,
                               "--slices-per-plane", "1", "--long-side", "96", "--no-stream", "--quiet", "--html",
                               str(folder / "report.html"), "--json", str(folder / "report.json")],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return (folder / "report.html").read_text(encoding="utf-8"), json.loads((folder / "report.json").read_text(encoding="utf-8")), \
        folder


def _images(page):
    return re.findall(r'<img src="([^"]+)" width="\d+" height="\d+" alt="([^"]*)"', page)


def test_page_is_self_contained_and_holds_everything(described):
    page, document, _ = described
    assert not re.search(r'(src|href)="(?!data:)', page) and "http://" not in page.replace(
        document["report_meta"]["server"], "")
    for uri, _ in _images(page):
        assert uri.startswith("data:image/png;base64,")
        Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).verify()
    assert page.count(NOTICE) == 2
    meta = document["report_meta"]
    for expected in ("tiny-vlm", meta["votemi_version"], meta["created"], "Draft: 0 of 3 accepted", "top_k 1"):
        assert expected in page
    assert "<script>" not in page and "&lt;script&gt;" in page  # the model's text is escaped


def test_each_finding_shows_the_thumbnails_of_its_cited_slices(described):
    page, document, _ = described
    rows = re.findall(r'<table class="finding">(.*?)</table>', page, re.S)
    assert len(rows) == 3
    cited = [[alt.split(":")[0] for _, alt in _images(row)] for row in rows]
    assert cited == [["A1", "C1"], [], ["A1"]]
    assert "cites S7: not among the images sent" in rows[1]
    thumbnail = Image.open(io.BytesIO(base64.b64decode(_images(rows[0])[0][0].split(",", 1)[1])))
    assert max(thumbnail.size) <= 180
    key_images = page.split("<h2>Key images</h2>", 1)[1]
    assert [alt.split(":")[0] for _, alt in _images(key_images)] == [i["id"] for i in document["report_meta"]["images"]]


def test_review_state_appears_on_the_page(described):
    _, document, _ = described
    report = Report.from_dict(document)
    report.findings.accept(0, "Dr. Who", when="2026-01-01T09:00:00+00:00")
    report.findings.reject(1, "Dr. Who", when="2026-01-01T09:01:00+00:00")
    page = report_html(report)
    assert "Draft: 1 of 3 accepted, 1 rejected; reviewed by Dr. Who" in page
    assert 'class="row-accepted"' in page and 'class="row-rejected"' in page
    assert "accepted by Dr. Who, 2026-01-01T09:00:00+00:00" in page


def test_chromium_renders_the_page(described):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed")
    _, _, folder = described
    shot = folder / "shot.png"
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--disable-component-update", "--disable-sync", "--no-first-run",
                        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1000,900",
                        (folder / "report.html").as_uri()], capture_output=True, timeout=120)
    image = Image.open(shot).convert("L")
    assert image.size == (1000, 900)
    histogram = image.histogram()
    assert histogram[255] < 0.95 * sum(histogram) and sum(histogram[:40]) > 1000  # text and black slices drawn
