"""Run report check: screenshot report.html in headless Chromium and fail on any page console error.

    python scripts/render_report.py artifacts/demo/report.html report.png [--width 1280] [--height 5000]

Exit codes: 0 screenshot written, 1 Chromium failed or the page logged console errors, 2 Chromium or the report missing.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# With --enable-logging=stderr Chromium logs every page console message as "...:INFO:CONSOLE:<line>] ..." (no level
# for console.error) and uncaught exceptions as "Uncaught ...". The report has no scripts, so any message is a fault.
CONSOLE_LINE = re.compile(r"Uncaught|:CONSOLE\b|CONSOLE\(")


def find_chromium() -> str | None:
    return next((path for name in CHROMIUM_NAMES if (path := shutil.which(name))), None)


def render(report: Path, out: Path, width: int, height: int, chromium: str) -> list[str]:
    """Write the screenshot to `out`; return the console error lines the page produced."""
    out.parent.mkdir(parents=True, exist_ok=True)
    # Screenshot beside `out`, then rename: a reader never sees a half-written PNG.
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:  # a fresh profile: no stale state
            command = [
                chromium,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={tmp}",
                f"--window-size={width},{height}",
                "--virtual-time-budget=5000",
                "--enable-logging=stderr",
                "--v=0",
                report.resolve().as_uri(),
            ]
            result = subprocess.run(command, capture_output=True, text=True, timeout=180)
        if result.returncode != 0 or os.path.getsize(tmp) == 0:
            raise RuntimeError(f"chromium exited with {result.returncode} and no screenshot:\n{result.stderr[-2000:]}")
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return [line for line in result.stderr.splitlines() if CONSOLE_LINE.search(line)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report_html", type=Path)
    parser.add_argument("out_png", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    # Headless --screenshot captures the window only, so the window must be as tall as the part to be seen.
    parser.add_argument("--height", type=int, default=5000)
    args = parser.parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        print(
            "error: Chromium not found (looked for " + ", ".join(CHROMIUM_NAMES) + "); "
            "on Debian/Ubuntu: apt-get install -y chromium",
            file=sys.stderr,
        )
        return 2
    if not args.report_html.is_file():
        print(
            f"error: {args.report_html}: report not found (build it: python -m training.report --artifacts DIR)", file=sys.stderr
        )
        return 2
    try:
        errors = render(args.report_html, args.out_png, args.width, args.height, chromium)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if errors:
        print("error: the page logged console errors:\n" + "\n".join(errors), file=sys.stderr)
        return 1
    print(f"screenshot written to {args.out_png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
