"""`use_regions: false` end to end: train -> caption -> evaluate on the pooled image vector."""

import json

from helpers import run_python, write_config

# The three commands in turn, in one fresh process (one TensorFlow start instead of three):
# train, caption three of the run's test images, then re-score the test split.
COMMANDS = """
import contextlib, io, json, sys
from pathlib import Path
from training.caption import main as caption
from training.evaluate import main as evaluate
from training.train import main as train

config, artifacts, images = sys.argv[1:4]
codes = {"train": train(["--config", config])}
predictions = json.loads((Path(artifacts) / "predictions_test.json").read_text())["captions"][:3]
output = io.StringIO()
with contextlib.redirect_stdout(output):
    codes["caption"] = caption([str(Path(images) / p["image_id"]) for p in predictions] + ["--artifacts", artifacts, "--json"])
evaluated = io.StringIO()
with contextlib.redirect_stdout(evaluated):
    codes["evaluate"] = evaluate(["--artifacts", artifacts, "--split", "test"])
print("RESULT " + json.dumps({"codes": codes, "predictions": predictions, "captions": json.loads(output.getvalue()),
                              "evaluate": evaluated.getvalue()}))
"""


def test_a_pooled_run_trains_captions_and_evaluates(demo_data, tmp_path):
    artifacts = tmp_path / "artifacts"
    config = write_config(
        tmp_path / "config.yaml", demo_data, artifacts, use_regions=False, epochs=2, eval_max_images=6, val_caption_images=0
    )
    done = run_python(["-c", COMMANDS, str(config), str(artifacts), str(demo_data / "Images")])
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result["codes"] == {"train": 0, "caption": 0, "evaluate": 0}, done.stderr[-3000:]

    snapshot = json.loads((artifacts / "config_snapshot.json").read_text())
    assert snapshot["model"]["use_regions"] is False
    predictions = result["predictions"]
    # The decoder attended over one key, the pooled vector, not the 4x4 grid of a region run.
    assert all(len(row) == 1 for p in predictions if "attention" in p for row in p["attention"])
    assert any("attention" in p for p in predictions)
    # training.caption pools each image's grid itself, and gets the captions and scores of the run's test
    # split, which were decoded from the run's pooled store: one pooling for both.
    assert [c["caption"] for c in result["captions"]] == [p["prediction"] for p in predictions]
    for caption, prediction in zip(result["captions"], predictions):
        assert abs(caption["score"] - prediction["score"]) < 1e-3
        assert "attention" not in caption  # no regions to show
    assert "cider" in result["evaluate"]
    summary = json.loads((artifacts / "run_summary.json").read_text())
    assert summary["bleu_scores"]["test_bleu4"] >= 0
