"""architecture: lstm_attention end to end, as a user runs it: train, extend the finished run (it resumes),
caption, export, and the SavedModel and the HTTP service give the captions `training.caption` gives."""

import csv
import json

import pytest
from helpers import run_python, saved_model_captions, served_captions, serving, write_config

IMAGES = 6


def metrics(artifacts):
    """metrics.csv without the wall time of each epoch."""
    with open(artifacts / "metrics.csv", newline="") as handle:
        return [{k: v for k, v in row.items() if k != "epoch_time_seconds"} for row in csv.DictReader(handle)]


@pytest.fixture(scope="module")
def run(demo_data, tmp_path_factory):
    """A 2-epoch lstm_attention run, extended to 3: (its artifacts_dir, what the extension printed, metrics.csv's
    rows before the extension)."""
    work = tmp_path_factory.mktemp("lstm")
    settings = dict(architecture="lstm_attention", eval_max_images=2, beam_size=2)
    config = write_config(work / "config.yaml", demo_data, work / "run", epochs=2, **settings)
    run_python(["-m", "training.train", "--config", str(config)])
    first = metrics(work / "run")
    write_config(config, demo_data, work / "run", epochs=3, **settings)
    extended = run_python(["-m", "training.train", "--config", str(config)])
    return work / "run", extended.stderr, first


@pytest.fixture(scope="module")
def images(demo_data):
    return sorted(str(p) for p in (demo_data / "Images").glob("*.png"))[:IMAGES]


@pytest.mark.slow
def test_lstm_run_resumes_exports_and_serves_the_captions_of_the_caption_command(run, images, tmp_path):
    artifacts, output, first = run
    assert "extending the finished run from 2 to 3 epochs" in output, output[-3000:]
    rows = metrics(artifacts)
    assert [row["epoch"] for row in rows] == ["1", "2", "3"] and rows[:2] == first  # resumed, not retrained
    assert json.loads((artifacts / "config_snapshot.json").read_text())["model"]["architecture"] == "lstm_attention"

    done = run_python(["-m", "training.caption", *images, "--artifacts", str(artifacts), "--json"])
    reference = [(r["caption"], r["score"]) for r in json.loads(done.stdout)]
    assert all(text for text, _ in reference)

    out = tmp_path / "export"
    run_python(["-m", "training.export", "--artifacts", str(artifacts), "--out", str(out)])
    saved = saved_model_captions(out / "saved_model", images)
    assert [text for text, _ in saved] == [text for text, _ in reference]
    assert [score for _, score in saved] == pytest.approx([score for _, score in reference], abs=1e-4)

    with serving(artifacts, "--max-batch", "4") as (url, _):
        answers = served_captions(url, images, "image/png")
    assert [a["caption"] for a in answers] == [text for text, _ in reference]
    assert [a["score"] for a in answers] == pytest.approx([score for _, score in reference], abs=1e-4)
