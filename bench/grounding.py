"""Benchmark of how right a recipe's captions are about the image, on worlds it was not made on.

Run: python bench/grounding.py [--config training/config.demo.yaml ...] [--presets demo,hard,crowded,tiny,lookalike]
                               [--seeds 1,2,3] [--images 3000] [--timeout 1800] [--out bench_data/grounding]
                               [--set epochs=3 ...]
Prints a line per run, a table, then one JSON object as the last line.

For each world (a `training.data.demo` preset and a seed) it draws `--images` images into the
invocation's own folder (a fresh one under `--out`, so no earlier run is ever touched), once for
all the configs. For each (config, preset, seed) it writes a copy of the config with the data paths
(images_path, captions_file, scenes_file, glove_path), artifacts_dir and the run's feature store
pointed into that folder, `seed` set to the world's seed and the `--set` overrides applied, and runs
`python -m training.train --config COPY` as a subprocess (its output in train.log beside the copy),
killed after `--timeout` seconds. From the files the run writes (run_summary.json, metrics.csv and
the predictions files, whose `scores` are the test scores) it reports:
  wall_seconds        the training command, start to end (extraction, training, evaluation)
  xe_epochs, scst_epochs  epochs trained by each stage (metrics.csv)
  xe / scst           test scores of the cross-entropy model and, when the recipe has SCST, of the model
                      the run ships after it (`final_model` says which: a run may keep the cross-entropy one):
                      coco BLEU-4, CIDEr, object precision and recall against scenes.json, and
                      distinct_share, the share of distinct captions among the test predictions (the
                      run's own figure when it reports one, else counted from its predictions file)
then, per (config, preset), the median of each figure over the seeds whose runs finished.
The whole default set (5 worlds x 3 seeds of 3000 images, one config) takes 1-2 hours on 2 cores.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import machine  # noqa: E402  (bench/machine.py)

from training.configs.training_config import apply_overrides, config_from_dict, read_config_file  # noqa: E402
from training.data.demo import PRESETS, generate_demo_dataset, make_world  # noqa: E402
from training.errors import UserInputError  # noqa: E402
from training.run.artifacts import METRICS_FILE, SUMMARY_FILE, predictions_name  # noqa: E402

FIGURES = ("bleu4", "cider", "object_precision", "object_recall", "distinct_share")
SCORE_KEYS = {"bleu4": "coco_bleu4", "cider": "cider", "object_precision": "object_precision", "object_recall": "object_recall"}


def distinct_share(predictions: dict) -> float | None:
    """The share of distinct captions among a predictions file's captions (1.0: every image its own caption)."""
    captions = [c["prediction"] for c in predictions.get("captions", [])]
    return len(set(captions)) / len(captions) if captions else None


def stage_figures(predictions_file: Path) -> dict | None:
    """The FIGURES of one predictions file (None when the run did not write it)."""
    if not predictions_file.is_file():
        return None
    predictions = json.loads(predictions_file.read_text(encoding="utf-8"))
    scores = predictions.get("scores", {})
    figures = {name: scores.get(key) for name, key in SCORE_KEYS.items()}
    reported = scores.get("distinct_share")
    figures["distinct_share"] = reported if reported is not None else distinct_share(predictions)
    return figures


def read_run(artifacts: Path) -> dict:
    """What a finished run's files say: epochs per stage, the final model, and each stage's test figures."""
    summary = json.loads((artifacts / SUMMARY_FILE).read_text(encoding="utf-8"))
    with open(artifacts / METRICS_FILE, encoding="utf-8", newline="") as handle:
        stages = [row.get("stage") or "xe" for row in csv.DictReader(handle)]
    scst = summary.get("scst")
    final = stage_figures(artifacts / predictions_name("test"))
    if scst is None:  # no SCST stage: the final model is the cross-entropy one
        xe, after = final, None
    elif scst.get("final_model") == "scst":
        xe, after = stage_figures(artifacts / predictions_name("test_xe")), final
    else:  # SCST ran, its model did not replace the cross-entropy one: the run ships (and scored) the latter
        xe, after = final, final
    return {
        "xe_epochs": stages.count("xe"),
        "scst_epochs": stages.count("scst"),
        "final_model": scst.get("final_model") if scst else "xe",
        "xe": xe,
        "scst": after,
    }


def write_config(source: Path, world: dict, run_dir: Path, seed: int, overrides: list[str]) -> Path:
    """A copy of `source` trained on `world`'s files into run_dir/artifacts, with `seed` and `overrides`."""
    sets = [
        f"images_path={world['images_dir']}",
        f"captions_file={world['captions_file']}",
        f"scenes_file={world['scenes_file']}",
        f"glove_path={world['glove_file']}",
        f"artifacts_dir={run_dir / 'artifacts'}",
        "features_dir=null",  # the run's own store: every world names its images demo_00000.png ...
        f"seed={seed}",
        *overrides,
    ]
    raw = apply_overrides(read_config_file(source), sets)
    config_from_dict(raw, source=str(source))  # a bad --set stops here, before any training
    path = run_dir / "config.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False), encoding="utf-8")
    return path


def train(config: Path, timeout: float) -> tuple[str, float]:
    """Run the training command on `config` (output in train.log beside it): (status, wall seconds)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    with open(config.parent / "train.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "training.train", "--config", str(config)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)  # the run stops at a clean point, as on a preemptible machine
            try:
                process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return "timeout", time.perf_counter() - start
    return ("ok" if code == 0 else f"exit {code}"), time.perf_counter() - start


def medians(runs: list[dict]) -> dict:
    """Per config and preset: the runs that finished, the median wall time and the median of each stage's figures."""
    table: dict = {}
    for run in runs:
        table.setdefault(run["config"], {}).setdefault(run["preset"], []).append(run)
    out: dict = {}
    for config, presets in table.items():
        for preset, group in presets.items():
            done = [r for r in group if r["status"] == "ok"]
            entry = {"runs": len(group), "finished": len(done), "wall_seconds": _median([r["wall_seconds"] for r in done])}
            for stage in ("xe", "scst"):
                figures = [r[stage] for r in done if r.get(stage)]
                entry[stage] = {name: _median([f[name] for f in figures]) for name in FIGURES} if figures else None
            out.setdefault(config, {})[preset] = entry
    return out


def _median(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


SHORT = {"bleu4": "B4", "cider": "CIDEr", "object_precision": "prec", "object_recall": "recall", "distinct_share": "distinct"}


def _cell(value, width: int = 8) -> str:
    if value is None:
        return "-".rjust(width)
    return (f"{value:.3f}" if isinstance(value, float) else str(value)).rjust(width)


def print_table(runs: list[dict], summary: dict) -> None:
    """A row per run, then the medians; the cross-entropy model's figures, then those after SCST."""
    head = " | ".join(
        " ".join(f"{stage + ' ' + SHORT[name] if i == 0 else SHORT[name]:>8}" for i, name in enumerate(FIGURES))
        for stage in ("XE", "SCST")
    )
    print(f"\n{'config':<20} {'preset':<10} {'seed':>6} {'status':>8} {'wall_s':>6}  {head}  final")
    rows = [(r["config"], r["preset"], str(r["seed"]), r["status"], r["wall_seconds"], r) for r in runs]
    rows += [
        (config, preset, "median", f"{m['finished']}/{m['runs']}", m["wall_seconds"], m)
        for config, presets in summary.items()
        for preset, m in presets.items()
    ]
    for config, preset, seed, status, wall, row in rows:
        cells = " | ".join(" ".join(_cell((row.get(stage) or {}).get(name)) for name in FIGURES) for stage in ("xe", "scst"))
        wall_text = "-" if wall is None else f"{wall:.0f}"
        print(f"{config:<20} {preset:<10} {seed:>6} {status:>8} {wall_text:>6}  {cells}  {row.get('final_model', '')}")


def _labels(configs: list[Path]) -> list[str]:
    """A short name per config: its file name without .yaml, numbered where two share one."""
    stems = [c.stem for c in configs]
    return [s if stems.count(s) == 1 else f"{i + 1}-{s}" for i, s in enumerate(stems)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", type=Path, help="a recipe to train (repeat to compare recipes)")
    parser.add_argument("--presets", default=",".join(PRESETS), help="comma-separated world presets (default: all)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds (default 1,2,3)")
    parser.add_argument("--images", type=int, default=3000, help="images per world (default 3000)")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a run may take before it is stopped")
    parser.add_argument("--out", type=Path, default=REPO / "bench_data" / "grounding", help="parent of the work folder")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="key=value for every config")
    args = parser.parse_args()
    configs = [c.resolve() for c in (args.config or [REPO / "training" / "config.demo.yaml"])]
    try:
        presets = [make_world(p.strip()) for p in args.presets.split(",") if p.strip()]
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
        for config in configs:
            config_from_dict(apply_overrides(read_config_file(config), args.overrides), source=str(config))
    except (UserInputError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    facts = machine.describe()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=time.strftime("%Y%m%d_%H%M%S_"), dir=args.out))  # fresh: never an earlier run's
    print(f"work folder: {work}", flush=True)
    runs = []
    for world in presets:
        for seed in seeds:
            data = generate_demo_dataset(work / "worlds" / f"{world.name}_seed{seed}", args.images, seed, world=world)
            for label, config in zip(_labels(configs), configs):
                run_dir = work / "runs" / label / f"{world.name}_seed{seed}"
                run_dir.mkdir(parents=True)
                copy = write_config(config, data, run_dir, seed, args.overrides)
                status, wall = train(copy, args.timeout)
                run = {"config": label, "preset": world.name, "seed": seed, "status": status, "wall_seconds": round(wall, 1)}
                if status == "ok":
                    run.update(read_run(run_dir / "artifacts"))
                runs.append(run)
                xe = run.get("xe") or {}
                print(
                    f"{label} {world.name} seed {seed}: {status} in {wall:.0f} s; XE object precision "
                    f"{_cell(xe.get('object_precision')).strip()}, recall {_cell(xe.get('object_recall')).strip()}",
                    flush=True,
                )
    summary = medians(runs)
    print_table(runs, summary)
    report = {
        "bench": "grounding",
        "configs": {label: str(config) for label, config in zip(_labels(configs), configs)},
        "presets": {world.name: world.describe() for world in presets},
        "seeds": seeds,
        "images": args.images,
        "overrides": args.overrides,
        "timeout_seconds": args.timeout,
        "work_dir": str(work),
        "runs": runs,
        "medians": summary,
        "machine": machine.finish(facts),
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
