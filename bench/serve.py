"""Benchmark of the HTTP service: images/s and latency from 1 and from 32 concurrent clients.

Run: python bench/serve.py [--model bench|demo] [--artifacts DIR] [--images 320] [--runs 3]
Prints a table, then one JSON object as the last line:
  conc1_images_per_s, conc32_images_per_s   median over the runs of images / wall time
  ratio                                     conc32 / conc1 (target >= 8 on 2 cores)
  p50_ms, p99_ms                            request latency per concurrency, over all timed requests
                                            (target: p99 at concurrency 32 under 1000 ms)

The model is the one bench/decode.py uses (--model bench, the default: the bench's own 3-epoch demo-config
model on stored PatchGrid features, made on first use in bench_data/decode; --model demo: artifacts/demo,
whose conv encoder runs once per image however the requests are batched). The service
is the real `python -m training.serve` on 127.0.0.1 with its defaults (--max-batch 32, --max-wait-ms 5),
started once; its start-up (loading and tracing every padded batch size) is reported as startup_s.
The clients are one aiohttp session in this process, C requests in flight at a time, each a demo
PNG of the run (64 x 64 px) read into memory before timing; the client shares the machine's cores
with the server. (An httpx.AsyncClient was the bottleneck itself: on this machine it managed ~70
GET /health per second at 32 connections, against ~1000 for aiohttp.) Each round times concurrency 1 on --images images, then 32 on the same images,
so a load spike from other processes hits both alike; one untimed round first. Captions at 32 are
checked against those at 1 (each request must get the caption it gets alone): conc32_same_captions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import httpx  # noqa: E402
import numpy as np  # noqa: E402
from decode import choose_model  # noqa: E402  (bench/decode.py)

CONCURRENCY = (1, 32)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def demo_images(artifacts: Path, count: int) -> list[bytes]:
    return [p.read_bytes() for p in demo_image_paths(artifacts, count)]


def demo_image_paths(artifacts: Path, count: int) -> list[Path]:
    """The first `count` PNG images of the run's images_path."""
    snapshot = json.loads((artifacts / "config_snapshot.json").read_text())
    folder = Path(snapshot["data"]["images_path"])
    folder = folder if folder.is_absolute() else REPO / folder
    paths = sorted(folder.glob("*.png"))[:count]
    if len(paths) < count:
        raise SystemExit(f"error: {folder} holds {len(paths)} PNG images, fewer than --images {count}")
    return paths


def start_service(artifacts: Path, *options: str) -> tuple[subprocess.Popen, str, float]:
    """`python -m training.serve` on a free port of 127.0.0.1, once /health answers: (process, url, start-up seconds)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    server = subprocess.Popen(
        [sys.executable, "-m", "training.serve", "--artifacts", str(artifacts), "--port", str(port), *options],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=sys.stderr,
    )
    launched = time.perf_counter()
    while True:
        if server.poll() is not None:
            raise SystemExit(f"error: the service exited with code {server.returncode}")
        try:
            if httpx.get(url + "/health").status_code == 200:
                return server, url, time.perf_counter() - launched
        except httpx.TransportError:
            time.sleep(0.1)


async def send_all(url: str, images: list[bytes], concurrency: int) -> tuple[float, list[float], list[dict]]:
    """Every image once, `concurrency` requests in flight; (seconds, latencies, answers in image order)."""
    latencies, answers = [0.0] * len(images), [None] * len(images)
    next_image = iter(range(len(images)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:

        async def client_loop():
            for i in next_image:
                start = time.perf_counter()
                async with client.post(url + "/caption", data=images[i], headers={"Content-Type": "image/png"}) as response:
                    response.raise_for_status()
                    answers[i] = await response.json()
                latencies[i] = time.perf_counter() - start

        start = time.perf_counter()
        await asyncio.gather(*(client_loop() for _ in range(concurrency)))
        return time.perf_counter() - start, latencies, answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=320, help="images per timed pass (default 320)")
    parser.add_argument("--runs", type=int, default=3, help="timed rounds (default 3)")
    parser.add_argument(
        "--model",
        choices=("bench", "demo"),
        default="bench",
        help="as in bench/decode.py: demo = artifacts/demo, bench = the bench's own model",
    )
    parser.add_argument("--artifacts", type=Path, default=None, help="serve this finished run instead")
    args = parser.parse_args()
    started = time.perf_counter()
    import machine  # bench/machine.py

    facts = machine.describe()
    artifacts, made = choose_model(args.model, args.artifacts)
    images = demo_images(artifacts, args.images)

    server, url, startup_s = start_service(artifacts)
    try:
        for concurrency in CONCURRENCY:  # untimed: connections, first-request costs
            asyncio.run(send_all(url, images[:64], concurrency))
        load_before = os.getloadavg()[0]
        seconds = {c: [] for c in CONCURRENCY}
        latencies = {c: [] for c in CONCURRENCY}
        answers = {}
        batches = {c: [0, 0] for c in CONCURRENCY}  # images, batches
        for run in range(args.runs):
            for concurrency in CONCURRENCY:
                before = httpx.get(url + "/health").json()
                took, waited, answers[concurrency] = asyncio.run(send_all(url, images, concurrency))
                after = httpx.get(url + "/health").json()
                batches[concurrency][0] += after["images_captioned"] - before["images_captioned"]
                batches[concurrency][1] += after["batches"] - before["batches"]
                seconds[concurrency].append(took)
                latencies[concurrency] += waited
            print(
                f"run {run + 1}/{args.runs}: "
                + ", ".join(f"concurrency {c}: {len(images) / seconds[c][-1]:.1f} images/s" for c in CONCURRENCY),
                file=sys.stderr,
                flush=True,
            )
    finally:
        server.terminate()
        server.wait(60)

    rates = {c: len(images) / statistics.median(seconds[c]) for c in CONCURRENCY}
    p50 = {c: 1000 * float(np.percentile(latencies[c], 50)) for c in CONCURRENCY}
    p99 = {c: 1000 * float(np.percentile(latencies[c], 99)) for c in CONCURRENCY}
    ratio = rates[32] / rates[1]
    same = sum(a["caption"] == b["caption"] for a, b in zip(answers[1], answers[32])) / len(images)

    print(f"\n{'concurrency':<13}{'images/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for c in CONCURRENCY:
        print(f"{c:<13}{rates[c]:>10.1f}{p50[c]:>9.1f}{p99[c]:>9.1f}")
    print(
        f"ratio 32 / 1: {ratio:.1f}x (target >= 8x: {'met' if ratio >= 8 else 'NOT met'}); "
        f"p99 at 32: {p99[32]:.0f} ms (target < 1000 ms: {'met' if p99[32] < 1000 else 'NOT met'})"
    )
    per_batch = {c: images_ / max(1, count) for c, (images_, count) in batches.items()}
    print(
        f"model: {artifacts} ({made}); service start-up {startup_s:.1f} s; "
        f"mean images per batch: {per_batch[1]:.1f} at concurrency 1, {per_batch[32]:.1f} at 32"
    )
    print(
        f"{os.cpu_count()} CPUs, load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}; "
        f"{time.perf_counter() - started:.0f} s in all\n"
    )
    print(
        json.dumps(
            {
                "conc1_images_per_s": round(rates[1], 1),
                "conc32_images_per_s": round(rates[32], 1),
                "ratio": round(ratio, 2),
                "ratio_target": 8,
                "ratio_target_met": ratio >= 8,
                "p50_ms": {str(c): round(p50[c], 1) for c in CONCURRENCY},
                "p99_ms": {str(c): round(p99[c], 1) for c in CONCURRENCY},
                "p99_target_ms": 1000,
                "p99_target_met": p99[32] < 1000,
                "conc32_same_captions": round(same, 4),
                "images": len(images),
                "runs": args.runs,
                "seconds": {str(c): [round(s, 3) for s in seconds[c]] for c in CONCURRENCY},
                "service": "python -m training.serve, defaults (--max-batch 32, --max-wait-ms 5)",
                "startup_s": round(startup_s, 1),
                "mean_images_per_batch": {str(c): round(per_batch[c], 2) for c in CONCURRENCY},
                "model": {"path": str(artifacts), "made": made},
                "cpus": os.cpu_count(),
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                "total_s": round(time.perf_counter() - started, 1),
                "machine": machine.finish(facts),
            }
        )
    )


if __name__ == "__main__":
    main()
