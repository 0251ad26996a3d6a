"""Soak of the HTTP service: a bounded stretch of steady load, minute by minute, on 127.0.0.1.

Run: python bench/soak.py [--minutes 10] [--concurrency 64] [--interval 60] [--images 64]
                          [--model bench|demo] [--artifacts DIR]
Prints a table, one row per interval (requests, errors, p50/p99 latency, the server's RSS at the
interval's end), then one JSON object as the last line, with the targets:
  errors 0                    every request answered 200 with the image's lone caption
  rss_end_vs_first <= 1.10    the server's memory stays flat: RSS after the last interval within 10% of the first's
  p99_last_vs_first <= 1.5    latency stays steady: the last interval's p99 within 1.5x of the first's

The model and the service are bench/serve.py's (bench/decode.py's model; the real `python -m
training.serve` with its defaults, started once). Each image's lone caption comes first from
`python -m training.caption` (one image at a time, through the Captioner), and every answer of
the soak must equal it: batching never changes a caption. The clients are one aiohttp session in
this process, --concurrency requests in flight all the time, cycling through --images demo PNGs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402
import numpy as np  # noqa: E402
from decode import choose_model  # noqa: E402  (bench/decode.py)
from serve import demo_image_paths, start_service  # noqa: E402  (bench/serve.py)

RSS_TARGET, P99_TARGET = 1.10, 1.5


def lone_captions(artifacts: Path, paths: list[Path]) -> dict[Path, str]:
    """Each image's caption from `python -m training.caption`, which captions it through the Captioner."""
    done = subprocess.run(
        [sys.executable, "-m", "training.caption", *map(str, paths), "--artifacts", str(artifacts), "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    return {Path(record["image"]): record["caption"] for record in json.loads(done.stdout)}


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


async def soak(
    url: str, images: list[tuple[bytes, str]], concurrency: int, seconds: float, interval: float, pid: int
) -> list[dict]:
    """`concurrency` clients posting without pause for `seconds`; one row per `interval` (requests, errors, latency, RSS)."""
    intervals = max(1, math.ceil(seconds / interval))
    start = time.perf_counter()
    end = start + intervals * interval
    records: list[tuple[float, float, str | None]] = []  # (finished at, latency, error)
    rows: list[dict] = []
    order = itertools.cycle(range(len(images)))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as client:

        async def client_loop():
            while time.perf_counter() < end:
                data, caption = images[next(order)]
                sent = time.perf_counter()
                try:
                    async with client.post(url + "/caption", data=data, headers={"Content-Type": "image/png"}) as response:
                        answer = await response.json()
                    problem = (
                        f"HTTP {response.status}: {answer}"
                        if response.status != 200
                        else None
                        if answer["caption"] == caption
                        else f"caption {answer['caption']!r} != {caption!r}"
                    )
                except (aiohttp.ClientError, asyncio.TimeoutError) as error:
                    problem = f"{type(error).__name__}: {error}"
                finished = time.perf_counter()
                records.append((finished, finished - sent, problem))

        async def reporter():
            for number in itertools.count(1):
                await asyncio.sleep(max(0.0, start + number * interval - time.perf_counter()))
                done = [r for r in records if r[0] <= start + number * interval and r[0] > start + (number - 1) * interval]
                rows.append(row(number, done, rss_mb(pid)))
                print(format_row(rows[-1]), file=sys.stderr, flush=True)
                if number == intervals:
                    return

        await asyncio.gather(reporter(), *(client_loop() for _ in range(concurrency)))
    return rows


def row(number: int, done: list[tuple[float, float, str | None]], rss: float) -> dict:
    latencies = [latency for _, latency, _ in done] or [float("nan")]
    errors = [problem for _, _, problem in done if problem]
    return {
        "interval": number,
        "requests": len(done),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "p50_ms": round(1000 * float(np.percentile(latencies, 50)), 1),
        "p99_ms": round(1000 * float(np.percentile(latencies, 99)), 1),
        "rss_mb": round(rss, 1),
    }


def format_row(r: dict) -> str:
    return f"{r['interval']:>8}{r['requests']:>10}{r['errors']:>8}{r['p50_ms']:>10.1f}{r['p99_ms']:>10.1f}{r['rss_mb']:>10.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load lasts (default 10)")
    parser.add_argument("--interval", type=float, default=60.0, help="seconds per table row (default 60)")
    parser.add_argument("--concurrency", type=int, default=64, help="requests in flight all the time (default 64)")
    parser.add_argument("--images", type=int, default=64, help="distinct demo images sent in turn (default 64)")
    parser.add_argument("--model", choices=("bench", "demo"), default="bench", help="as in bench/serve.py")
    parser.add_argument("--artifacts", type=Path, default=None, help="serve this finished run instead")
    args = parser.parse_args()
    started = time.perf_counter()
    import machine  # bench/machine.py

    facts = machine.describe()
    artifacts, made = choose_model(args.model, args.artifacts)
    paths = demo_image_paths(artifacts, args.images)
    captions = lone_captions(artifacts, paths)
    images = [(path.read_bytes(), captions[path.resolve()]) for path in paths]

    server, url, startup_s = start_service(artifacts)
    try:
        print("warm-up (connections, first requests):", file=sys.stderr)
        asyncio.run(soak(url, images, args.concurrency, 5, 5, server.pid))
        load_before = os.getloadavg()
        print(
            f"{'interval':>8}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}{'RSS MB':>10}"
            f"   ({args.interval:g} s each, concurrency {args.concurrency})",
            file=sys.stderr,
            flush=True,
        )
        rows = asyncio.run(soak(url, images, args.concurrency, 60 * args.minutes, args.interval, server.pid))
        load_after = os.getloadavg()
    finally:
        server.terminate()
        server.wait(60)

    errors = sum(r["errors"] for r in rows)
    rss_ratio = rows[-1]["rss_mb"] / rows[0]["rss_mb"]
    p99_ratio = rows[-1]["p99_ms"] / rows[0]["p99_ms"]
    met = {"errors": errors == 0, "rss": rss_ratio <= RSS_TARGET, "p99": p99_ratio <= P99_TARGET}
    print(f"\n{'interval':>8}{'requests':>10}{'errors':>8}{'p50 ms':>10}{'p99 ms':>10}{'RSS MB':>10}")
    for r in rows:
        print(format_row(r))
    print(
        f"errors {errors} (target 0: {'met' if met['errors'] else 'NOT met'}); RSS last/first {rss_ratio:.3f} "
        f"(target <= {RSS_TARGET}: {'met' if met['rss'] else 'NOT met'}); p99 last/first {p99_ratio:.2f} "
        f"(target <= {P99_TARGET}: {'met' if met['p99'] else 'NOT met'})"
    )
    print(
        f"model: {artifacts} ({made}); service start-up {startup_s:.1f} s; {os.cpu_count()} CPUs, "
        f"load average (1, 5, 15 min) {tuple(round(x, 1) for x in load_before)} -> {tuple(round(x, 1) for x in load_after)}\n"
    )
    print(
        json.dumps(
            {
                "minutes": args.minutes,
                "interval_s": args.interval,
                "concurrency": args.concurrency,
                "images": len(images),
                "rows": rows,
                "requests": sum(r["requests"] for r in rows),
                "errors": errors,
                "rss_end_vs_first": round(rss_ratio, 4),
                "p99_last_vs_first": round(p99_ratio, 3),
                "targets": {"errors": 0, "rss_end_vs_first": RSS_TARGET, "p99_last_vs_first": P99_TARGET},
                "targets_met": met,
                "service": "python -m training.serve, defaults (--max-batch 32, --max-wait-ms 5, --max-queue 256)",
                "startup_s": round(startup_s, 1),
                "model": {"path": str(artifacts), "made": made},
                "cpus": os.cpu_count(),
                "load_average": [[round(x, 2) for x in load_before], [round(x, 2) for x in load_after]],
                "total_s": round(time.perf_counter() - started, 1),
                "machine": machine.finish(facts),
            }
        )
    )


if __name__ == "__main__":
    main()
