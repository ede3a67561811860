"""Benchmark of fitting a request to a server: prompt tokens and latency of slices, contact sheets, context, examples.

Run from the repository root (the tiny random Gemma 3 of ``vlm_fixtures``, MedGemma's architecture, is
built in a temporary folder unless ``--model`` names a transformers model folder)::

    PYTHONPATH=VoteMI:Testing python Testing/bench_fit.py [--model DIR] [--repeats 3] [--case tcga_du_7294]

One ``votemi serve`` subprocess answers every request over loopback HTTP. The query is a real case of
../shared/data with its Vote-MI selection (3 slices per plane, 9 in all); the worked example is another
real case with a one-line report. Each row is one way of sending the same nine slices; prompt tokens
are the server's count after the chat template (images included), latency the median wall time of a
describe with 16 new tokens, decoding not constrained (``structured="off"``), so rows differ only in
what is sent. The last column puts the images at MedGemma's 256 tokens each instead of the tiny model's
own count per image (measured by the probe), text unchanged: the cost a real Gemma 3 based model would see.
Prints one table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Tokens a Gemma 3 based model (MedGemma) spends on one image.
MEDGEMMA_IMAGE_TOKENS = 256
DATA = HERE.parents[1] / "shared" / "data"

#: (name, settings changes, whether the worked example is sent)
ROWS = (
    ("9 slices, one image each", dict(pack="none"), False),
    ("3 contact sheets (one per plane)", dict(pack="grid"), False),
    ("1 contact sheet (server takes 1 image)", dict(max_images=1), False),
    ("9 slices + context 16", dict(pack="none", context=16), False),
    ("1 sheet + context 16 (server takes 2)", dict(max_images=2, context=16), False),
    ("3 sheets + example k=1", dict(pack="grid"), True),
)


def _example_folder(case: str) -> str:
    folder = Path(tempfile.mkdtemp(prefix="votemi-examples-")) / case
    folder.mkdir()
    os.symlink(DATA / case / "image.nii.gz", folder / "image.nii.gz")
    (folder / "report.txt").write_text("Findings: enhancing mass in the left temporal lobe [A1].\n"
                                       "Impression: glioma.\n", encoding="utf-8")
    return str(folder.parent)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="transformers model folder (default: a tiny random Gemma 3)")
    parser.add_argument("--repeats", type=int, default=3, help="timed describes per row (default: 3)")
    parser.add_argument("--case", default="tcga_du_7294", help="query case in ../shared/data")
    parser.add_argument("--example", default="tcga_fg_6692", help="worked example case in ../shared/data")
    args = parser.parse_args(argv)
    os.environ.setdefault("VOTEMI_CACHE_DIR", tempfile.mkdtemp(prefix="votemi-cache-"))
    sys.path.insert(0, str(HERE))
    from vlm_fixtures import build_tiny_gemma3, serve_process
    from VoteMILib.selection import select_slices
    from VoteMILib.vlm import DescribeSettings, describe
    from VoteMILib.volumes import load_volume

    model = args.model or build_tiny_gemma3(tempfile.mkdtemp(prefix="votemi-gemma3-"))
    volume = load_volume(DATA / args.case / "image.nii.gz")
    selection = select_slices(volume, top_k=3, seed=0)
    examples = _example_folder(args.example)
    rows = []
    with serve_process(model) as url:
        from VoteMILib.vlm.capabilities import probe
        from VoteMILib.vlm.pipeline import make_client

        client = make_client(DescribeSettings(server_url=url))
        per_image = probe(client, client.list_models()[0]).prompt_tokens_per_image
        for name, changes, with_example in ROWS:
            settings = DescribeSettings(server_url=url, max_tokens=16, structured="off", retries=0, seed=0,
                                        examples_dir=examples if with_example else "", **changes)
            times = []
            for _ in range(max(1, args.repeats)):
                started = time.perf_counter()
                report = describe(volume, selection, settings)
                times.append(time.perf_counter() - started)
            sent = report.meta["sent"]
            tokens = report.meta["usage"]["prompt_tokens"]
            images = sent["images_per_request"]
            rows.append((name, images, tokens, round(tokens + images * (MEDGEMMA_IMAGE_TOKENS - per_image)),
                         statistics.median(times)))
    print(f"query {args.case}, 9 voted slices; model {os.path.basename(os.path.normpath(model))} "
          f"({per_image:g} prompt tokens per image); median of {args.repeats} describes (16 new tokens)")
    print(f"| {'sent':<40} | images | prompt tokens | at 256/image | latency s |")
    print(f"|{'-' * 42}|--------|---------------|--------------|-----------|")
    for name, images, tokens, medgemma, seconds in rows:
        print(f"| {name:<40} | {images:>6} | {tokens:>13} | {medgemma:>12} | {seconds:>9.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
