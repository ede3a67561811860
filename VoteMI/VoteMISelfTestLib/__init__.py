"""Checks shared by the Slicer self-test (``VoteMITest``) and the pytest suite; kept out of the engine
(``VoteMILib``), shipped beside it because Slicer runs the self-test where the module is installed.

Nothing here needs the network or Qt: a synthetic head with a bright lesion-like blob, a loopback
HTTP server that answers like an OpenAI-compatible vision-language model, and assertions on the
nodes :func:`VoteMILib.mrml.apply_selection` puts into a scene. Each check raises
``AssertionError`` with a readable message.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from VoteMILib import mrml
from VoteMILib.geometry import NORMAL_INDEX

#: Text the loopback server streams back, in pieces.
LOOPBACK_REPORT = ("Findings: a well-circumscribed hyperintense lesion in the right hemisphere. "
                   "Impression: focal lesion; correlate clinically.")
LOOPBACK_MODEL = "votemi-loopback"


@dataclass
class BlobPhantom:
    """A synthetic head volume with one bright spherical lesion.

    Attributes
    ----------
    array : ndarray of float32, shape (K, J, I)
    ijk_to_ras : ndarray, shape (4, 4)
    blob_center_ras : ndarray, shape (3,)
    blob_radius_mm : float
    """

    array: np.ndarray
    ijk_to_ras: np.ndarray
    blob_center_ras: np.ndarray
    blob_radius_mm: float


def blob_phantom(shape_kji=(60, 96, 96), spacing_mm=2.0, blob_center_kji=(40, 56, 34), blob_radius_mm=10.0,
                 seed: int = 0) -> BlobPhantom:
    """A textured ellipsoidal "head" in an LPS-stored grid (as most scanners write) with a bright blob."""
    rng = np.random.default_rng(seed)
    k, j, i = np.indices(shape_kji, dtype=np.float32)
    centre = (np.array(shape_kji, dtype=np.float32) - 1) / 2
    radii = np.array(shape_kji, dtype=np.float32) * 0.42
    head = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + ((i - centre[2]) / radii[2]) ** 2
    from scipy import ndimage

    texture = ndimage.gaussian_filter(rng.normal(size=shape_kji).astype(np.float32), 1.5)
    array = np.where(head <= 1.0, 100.0 + 25.0 * texture / max(float(texture.std()), 1e-6), 0.0)
    distance_mm = spacing_mm * np.sqrt((k - blob_center_kji[0]) ** 2 + (j - blob_center_kji[1]) ** 2
                                       + (i - blob_center_kji[2]) ** 2)
    array = np.where(distance_mm <= blob_radius_mm, 320.0 + 10.0 * texture, array).astype(np.float32)
    ijk_to_ras = np.diag([-spacing_mm, -spacing_mm, spacing_mm, 1.0])  # LPS storage seen in RAS
    ijk_to_ras[:3, 3] = [spacing_mm * shape_kji[2] / 2, spacing_mm * shape_kji[1] / 2, -spacing_mm * shape_kji[0] / 2]
    center = ijk_to_ras @ np.array([blob_center_kji[2], blob_center_kji[1], blob_center_kji[0], 1.0])
    return BlobPhantom(array, ijk_to_ras, center[:3], float(blob_radius_mm))


def check_axial_pick_through_blob(result, phantom: BlobPhantom) -> None:
    """The best axial slice must cut through the blob."""
    best = result.planes["axial"].selected[0]
    distance = abs(best.position_mm - phantom.blob_center_ras[2])
    assert distance <= phantom.blob_radius_mm, (
        f"best axial slice at S={best.position_mm:.1f} mm misses the blob at S={phantom.blob_center_ras[2]:.1f} mm "
        f"(radius {phantom.blob_radius_mm:.0f} mm)")


def check_scene(scene, volume_node, result, tolerance_mm: float = 1e-3) -> None:
    """Assert that the scene holds exactly one consistent set of VoteMI nodes for ``result``.

    Checks: one marks node, table and series per plane, one chart; a control point at the RAS
    centre of every selected slice with the expected label; one table row per slice with the
    result's positions and scores; slice views showing a plane sit on its best slice.
    """
    planes = list(result.planes)
    for role, expected in (("marks", len(planes)), ("scores", len(planes)), ("series", len(planes)), ("chart", 1)):
        found = mrml.votemi_nodes(scene, volume_node, role=role)
        assert len(found) == expected, (
            f"{len(found)} VoteMI {role} node(s) for {volume_node.GetName()}, expected {expected}")
    assert len(mrml.votemi_nodes(scene, volume_node, role="report")) <= 1, "more than one report node"
    for plane in planes:
        plane_result = result.planes[plane]
        marks, = mrml.votemi_nodes(scene, volume_node, role="marks", plane=plane)
        assert marks.GetNumberOfControlPoints() == len(plane_result.selected), f"{plane}: wrong number of marks"
        for index, chosen in enumerate(plane_result.selected):
            point = np.array(marks.GetNthControlPointPositionWorld(index))
            assert np.allclose(point, chosen.mark_ras, atol=tolerance_mm), (
                f"{plane} mark {index + 1} at {point.round(3)}, expected {np.round(chosen.mark_ras, 3)}")
            assert abs(point[NORMAL_INDEX[plane]] - chosen.position_mm) <= tolerance_mm
            assert marks.GetNthControlPointLabel(index) == mrml.mark_label(chosen)
        table, = mrml.votemi_nodes(scene, volume_node, role="scores", plane=plane)
        rows = mrml.table_rows(table)
        assert len(rows) == len(plane_result.scores), (
            f"{plane}: {len(rows)} table rows for {len(plane_result.scores)} slices")
        assert np.allclose([row["position_mm"] for row in rows], plane_result.positions_mm, atol=tolerance_mm)
        assert np.allclose([row["score"] for row in rows], plane_result.scores, atol=1e-9)
        series, = mrml.votemi_nodes(scene, volume_node, role="series", plane=plane)
        assert series.GetTableNode() is table, f"{plane}: plot series does not use the score table"
        best = plane_result.selected[0]
        for node in mrml.slice_nodes(scene):
            if mrml.slice_node_plane(node) == plane:
                offset = mrml.slice_offset_mm(node, best.center_ras)
                assert abs(offset) <= tolerance_mm, f"{node.GetName()} is {offset:.2f} mm off the best {plane} slice"
    chart, = mrml.votemi_nodes(scene, volume_node, role="chart")
    assert chart.GetNumberOfPlotSeriesNodes() == len(planes), "chart does not hold one series per plane"


# --------------------------------------------------------------------------------------------
# Loopback vision-language model server


@dataclass
class LoopbackServer:
    """An OpenAI-compatible chat server on 127.0.0.1 that answers every request with a fixed report.

    Use as a context manager; ``url`` is the server URL and ``requests`` the decoded JSON bodies
    received, so a test can check what was sent (model, images).
    """

    text: str = LOOPBACK_REPORT
    model: str = LOOPBACK_MODEL
    requests: list = field(default_factory=list)
    url: str = ""

    def __enter__(self):
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _json(self, status, payload):
                body = json.dumps(payload).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._json(200, {"object": "list", "data": [{"id": owner.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    request = json.loads(self.rfile.read(length).decode("utf-8"))
                except ValueError:
                    self._json(400, {"error": {"message": "bad JSON", "type": "invalid_request_error"}})
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                    return
                owner.requests.append(request)
                if request.get("model") not in ("", owner.model):
                    self._json(404, {"error": {"message": f"model '{request.get('model')}' not found",
                                               "type": "invalid_request_error"}})
                    return
                if not request.get("stream"):
                    self._json(200, {"id": "loopback", "object": "chat.completion", "model": owner.model,
                                     "choices": [{"index": 0, "finish_reason": "stop",
                                                  "message": {"role": "assistant", "content": owner.text}}]})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.end_headers()
                words = owner.text.split(" ")
                pieces = [word + (" " if n < len(words) - 1 else "") for n, word in enumerate(words)]
                for piece in pieces:
                    event = {"id": "loopback", "object": "chat.completion.chunk", "model": owner.model,
                             "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(event)}\n\n".encode("utf-8"))
                final = {"id": "loopback", "object": "chat.completion.chunk", "model": owner.model,
                         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
                self.wfile.write(f"data: {json.dumps(final)}\n\ndata: [DONE]\n\n".encode("utf-8"))
                self.wfile.flush()

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="VoteMI loopback VLM", daemon=True)
        self._thread.start()
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
        return False

    def images_received(self) -> int:
        """Images in the last chat request."""
        if not self.requests:
            return 0
        content = self.requests[-1]["messages"][0]["content"]
        return sum(1 for part in content if isinstance(part, dict) and part.get("type") == "image_url")


def check_report_node(node, report, streamed: list) -> None:
    """The report node holds the model's text, the streamed pieces add up to it, and it is not 'edited'."""
    assert node is not None, "no report node"
    assert node.GetText() == report.text, "report node text differs from the model's answer"
    assert "".join(streamed) == report.text, "streamed pieces do not add up to the report"
    assert not mrml.report_edited(node), "a report VoteMI wrote counts as edited by the user"
    assert node.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "model") == report.meta.get("model")
    assert node.GetAttribute(mrml.REPORT_ATTRIBUTE_PREFIX + "complete") == "true"
