"""Benchmark of ``votemi serve``'s limits: what hostile or heavy requests cost the server process.

Run from the repository root (the tiny random LLaVA of ``vlm_fixtures`` is built in a temporary
folder unless ``--model`` names one)::

    PYTHONPATH=VoteMI python Testing/bench_serve.py [--model DIR] [--only NAME ...] [--rss-ceiling-mb 4000]

Each case starts its own ``votemi serve`` subprocess, so peak memory (VmHWM) and CPU seconds
(utime + stime) belong to that case alone. A guard kills the server when its memory passes
``--rss-ceiling-mb`` or a case runs past ``--case-timeout``: the unprotected server of the issue
reached 24 GB on the 20 MB prompt, more than this shared machine may give. Prints one table.
Linux only (reads /proc).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import io
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

CASES = ("idle", "prompt_20mb", "prompt_0.38mb", "prompt_0.38mb_token_cap", "png_13000", "disconnect", "load",
         "sigterm")
#: Lifts the character cap, so that only the token cap (after tokenising and the chat template) stops a prompt.
NO_CHARACTER_CAP = ("--max-prompt-chars", str(10**9))


def text_of(size_bytes: int) -> str:
    """Ordinary English text (this file's docstring repeated) of about ``size_bytes`` characters."""
    unit = __doc__ + "\n"
    return (unit * (size_bytes // len(unit) + 1))[:size_bytes]


def png_data_url(width: int, height: int) -> str:
    """A black greyscale PNG as a data URL (13000x13000 compresses to about 160 KB)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def chat(content, max_tokens: int = 8, stream: bool = False) -> bytes:
    return json.dumps({"model": "any", "max_tokens": max_tokens, "stream": stream,
                       "messages": [{"role": "user", "content": content}]}).encode()


class Server:
    """A ``votemi serve`` subprocess on a free loopback port, watched for memory and CPU."""

    def __init__(self, model: str, extra_args=(), rss_ceiling_mb: float = 4000.0):
        environment = dict(os.environ, HF_HUB_OFFLINE="1", PYTHONWARNINGS="ignore")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "VoteMILib.cli", "serve", "--model", model, "--port", "0", "--quiet",
             "--device", "cpu", *extra_args],
            stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace", env=environment)
        self.port = None
        for line in self.process.stderr:
            found = re.search(r"on http://127\.0\.0\.1:(\d+) ", line)
            if found:
                self.port = int(found.group(1))
                break
        if self.port is None:
            raise RuntimeError("votemi serve did not start")
        threading.Thread(target=self.process.stderr.read, daemon=True).start()  # keep the pipe drained
        self.ceiling_kb = rss_ceiling_mb * 1024
        self.killed = ""
        self.last = {}
        self._stop = threading.Event()
        self._guard = threading.Thread(target=self._watch, daemon=True)
        self._guard.start()
        self.cpu_start = self.cpu_s()

    def status_kb(self, key: str) -> float:
        try:
            with open(f"/proc/{self.process.pid}/status") as status:
                for line in status:
                    if line.startswith(key + ":"):
                        return float(line.split()[1])
        except OSError:
            pass
        return float("nan")

    def cpu_s(self) -> float:
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def _watch(self):
        while not self._stop.wait(0.02):
            if self.status_kb("VmRSS") > self.ceiling_kb:
                self.kill(f"killed above {self.ceiling_kb / 1024:.0f} MB")
                return

    def kill(self, why: str):
        """Kill the server, keeping its last peak memory and CPU time."""
        if self.process.poll() is None:
            self.last = self.measure()
            self.killed = self.killed or why
            self.process.kill()

    def measure(self) -> dict:
        """Peak RSS (MB) and CPU seconds since start; once killed, the values just before."""
        if self.killed or self.process.poll() is not None:  # a dying process has no memory lines any more
            return self.last or {"peak_mb": float("nan"), "cpu_s": float("nan")}
        return {"peak_mb": self.status_kb("VmHWM") / 1024, "cpu_s": self.cpu_s() - self.cpu_start}

    def kill_after(self, seconds: float) -> threading.Timer:
        timer = threading.Timer(seconds, self.kill, args=(f"killed after {seconds:g} s",))
        timer.daemon = True
        timer.start()
        return timer

    def close(self):
        self._stop.set()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def post(port: int, body: bytes, timeout: float = 600.0):
    """(status or exception name, wall seconds, first 120 characters of the answer)."""
    started = time.monotonic()
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/chat/completions", body=body, headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = response.read()
        status = response.status
    except (OSError, http.client.HTTPException) as error:
        status, answer = type(error).__name__, b""
    finally:
        connection.close()
    return status, time.monotonic() - started, answer[:120].decode("utf-8", "replace")


def one_request_case(model, body: bytes, args, extra_args=()) -> dict:
    server = Server(model, extra_args, rss_ceiling_mb=args.rss_ceiling_mb)
    before = server.measure()
    timer = server.kill_after(args.case_timeout)
    try:
        status, wall, answer = post(server.port, body)
        after = server.measure()
    finally:
        timer.cancel()
        server.close()
    return {"status": status, "wall_s": wall, "idle_peak_mb": before["peak_mb"], "peak_mb": after["peak_mb"],
            "cpu_s": after["cpu_s"], "note": server.killed or answer}


def disconnect_case(model, args) -> dict:
    """A non-streaming client asks for 4000 tokens and hangs up after 1 s: how long until the model is free?"""
    server = Server(model, rss_ceiling_mb=args.rss_ceiling_mb)
    before = server.measure()
    post(server.port, chat("Hello", max_tokens=2))  # the first generation of a process is slow: not measured
    body = chat("Describe the image.", max_tokens=4000)
    try:
        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            time.sleep(1.0)
        left = time.monotonic()
        status, _, answer = post(server.port, chat("Hello", max_tokens=2))
        freed = time.monotonic() - left
        after = server.measure()
    finally:
        server.close()
    return {"status": status, "wall_s": freed, "idle_peak_mb": before["peak_mb"],
            "peak_mb": after["peak_mb"], "cpu_s": after["cpu_s"],
            "note": "seconds from hang-up until a 2-token request was answered"}


def sigterm_case(model, args) -> dict:
    """SIGTERM while an answer streams: seconds until the process has exited, and how the stream ended."""
    server = Server(model, rss_ceiling_mb=args.rss_ceiling_mb)
    before = server.measure()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    connection.request("POST", "/v1/chat/completions", body=chat("Describe the image.", max_tokens=4000, stream=True),
                       headers={"Content-Type": "application/json"})
    response = connection.getresponse()
    response.readline()  # the first event: generating now
    after = server.measure()
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    try:
        tail = response.read().decode("utf-8", "replace").strip().splitlines()[-1]
    except (OSError, http.client.HTTPException) as error:
        tail = type(error).__name__
    code = server.process.wait(timeout=60)
    wall = time.monotonic() - signalled
    connection.close()
    server.close()
    return {"status": f"exit {code}", "wall_s": wall, "idle_peak_mb": before["peak_mb"], "peak_mb": after["peak_mb"],
            "cpu_s": after["cpu_s"], "note": f"seconds from SIGTERM to exit; stream ended with: {tail[:80]}"}


def load_case(model, args, clients: int = 20, requests: int = 5) -> dict:
    """``clients`` threads x ``requests`` each, every other one streamed, with /health polled throughout."""
    server = Server(model, rss_ceiling_mb=args.rss_ceiling_mb)
    before = server.measure()
    latencies, statuses, health = [], [], []
    lock = threading.Lock()
    done = threading.Event()

    def client(n):
        for k in range(requests):
            status, wall, _ = post(server.port, chat("Describe the image.", max_tokens=8, stream=(n + k) % 2 == 1),
                                   timeout=60)
            with lock:
                latencies.append(wall)
                statuses.append(status)

    def poll_health():
        while not done.is_set():
            started = time.monotonic()
            connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
            try:
                connection.request("GET", "/health")
                connection.getresponse().read()
                health.append(time.monotonic() - started)
            except (OSError, http.client.HTTPException):
                health.append(float("inf"))
            finally:
                connection.close()
            time.sleep(0.1)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    watcher = threading.Thread(target=poll_health)
    started = time.monotonic()
    watcher.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.monotonic() - started
    done.set()
    watcher.join()
    after = server.measure()
    server.close()
    names = [str(status) for status in statuses]
    counts = {name: names.count(name) for name in sorted(set(names))}
    quantiles = statistics.quantiles(latencies, n=20)
    return {"status": " ".join(f"{k}x{v}" for k, v in counts.items()), "wall_s": wall,
            "idle_peak_mb": before["peak_mb"], "peak_mb": after["peak_mb"], "cpu_s": after["cpu_s"],
            "note": f"{len(latencies) / wall:.1f} req/s; latency median {statistics.median(latencies):.2f} s, "
                    f"p95 {quantiles[18]:.2f} s, max {max(latencies):.2f} s; /health max {max(health):.3f} s "
                    f"over {len(health)} polls"}


def run_case(name, model, args) -> dict:
    if name == "idle":
        server = Server(model, rss_ceiling_mb=args.rss_ceiling_mb)
        time.sleep(1.0)
        measured = server.measure()
        server.close()
        return {"status": "-", "wall_s": float("nan"), "idle_peak_mb": measured["peak_mb"],
                "peak_mb": measured["peak_mb"], "cpu_s": measured["cpu_s"], "note": "started, no request"}
    if name == "prompt_20mb":
        return one_request_case(model, chat(text_of(20 * 2**20)), args)
    if name.startswith("prompt_0.38mb"):
        extra = NO_CHARACTER_CAP if name.endswith("token_cap") else ()
        return one_request_case(model, chat(text_of(int(0.38 * 2**20))), args, extra)
    if name == "png_13000":
        return one_request_case(model, chat([{"type": "text", "text": "Describe"},
                                             {"type": "image_url", "image_url": {"url": png_data_url(13000, 13000)}}]),
                                args)
    if name == "disconnect":
        return disconnect_case(model, args)
    if name == "sigterm":
        return sigterm_case(model, args)
    return load_case(model, args)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: build the tiny random LLaVA of the tests)")
    parser.add_argument("--only", nargs="+", choices=CASES, help="run only these cases")
    parser.add_argument("--rss-ceiling-mb", type=float, default=4000.0, help="kill the server above this RSS")
    parser.add_argument("--case-timeout", type=float, default=300.0, help="kill the server after this long")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if not model:
            sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
            os.environ["HF_HUB_OFFLINE"] = "1"
            from vlm_fixtures import build_tiny_vlm

            model = build_tiny_vlm(os.path.join(folder, "tiny-vlm"))
        print("| case | answer | wall s | idle peak MB | peak MB | CPU s | note |")
        print("|---|---|---|---|---|---|---|")
        for name in args.only or CASES:
            row = run_case(name, model, args)
            print(f"| {name} | {row['status']} | {row['wall_s']:.2f} | {row['idle_peak_mb']:.0f} | "
                  f"{row['peak_mb']:.0f} | {row['cpu_s']:.1f} | {row['note']} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
