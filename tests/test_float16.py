"""The float16 path GPU users get, run on the CPU: mixed_float16 training, resume after a kill, decoding.

With a GPU, configure_precision picks 'mixed_float16' and Keras wraps the optimizer in a
LossScaleOptimizer. There is no GPU here, so these runs make configure_precision choose that policy
(the one decision a GPU would change) and run everything else for real.
"""

import csv
import json
import textwrap

import numpy as np
import pytest
import yaml
from helpers import run_python, tiny_config

# Prints one JSON line per event: the optimizer and its loss-scale state at the start of training
# and after every epoch; KILL_EPOCH (0-based, -1: never) dies by SIGKILL in the middle of that epoch.
TRAIN_IN_FLOAT16 = textwrap.dedent(
    """
    import json, os, signal, sys
    import keras
    import training.utils
    from training.train import TrainingPipeline
    from training.utils import setup_logging

    def float16_as_on_a_gpu(use_mixed_precision):
        keras.mixed_precision.set_global_policy("mixed_float16")
        return "mixed_float16"

    training.utils.configure_precision = float16_as_on_a_gpu
    KILL_EPOCH = int(sys.argv[2])

    class Report(keras.callbacks.Callback):
        def emit(self, event, **extra):
            optimizer = self.model.optimizer
            print(json.dumps({"event": event, "optimizer": type(optimizer).__name__,
                              "inner": type(getattr(optimizer, "inner_optimizer", optimizer)).__name__,
                              "loss_scale": float(optimizer.dynamic_scale.numpy()),
                              "scale_steps": int(optimizer.step_counter.numpy()),
                              "iterations": int(optimizer.iterations.numpy()),
                              "compute_dtype": self.model.compute_dtype, **extra}), flush=True)
        def on_train_begin(self, logs=None):
            self.emit("begin")
        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
        def on_train_batch_end(self, batch, logs=None):
            if self.epoch == KILL_EPOCH and batch == 1:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill: nothing gets to clean up
        def on_epoch_end(self, epoch, logs=None):
            self.emit("epoch_end", epoch=epoch + 1)

    setup_logging()
    # A resumed model is loaded (optimizer included) before fit starts, so "begin" shows what was restored.
    TrainingPipeline(sys.argv[1], callbacks=[Report()]).run()
    """
)


def events(stdout: str) -> list[dict]:
    # Keras' progress bar may precede an event on its line.
    return [json.loads(line[line.index('{"event"') :]) for line in stdout.splitlines() if '{"event"' in line]


@pytest.fixture(scope="module")
def float16_run(demo_data, tmp_path_factory):
    """A tiny mixed_float16 run killed in its second epoch, then resumed to the end."""
    work = tmp_path_factory.mktemp("float16")
    artifacts = work / "artifacts"
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_config(demo_data, artifacts, epochs=3, early_stopping_patience=10, eval_max_images=6)))
    killed = run_python(["-c", TRAIN_IN_FLOAT16, str(path), "1"], check=False)
    assert killed.returncode == -9, killed.stderr[-3000:]
    resumed = run_python(["-c", TRAIN_IN_FLOAT16, str(path), "-1"])
    return artifacts, events(killed.stdout), events(resumed.stdout), resumed.stdout + resumed.stderr


def test_float16_training_uses_the_fused_adam_under_loss_scaling_and_learns(float16_run):
    artifacts, before_kill, _, _ = float16_run
    assert before_kill[0]["optimizer"] == "LossScaleOptimizer" and before_kill[0]["inner"] == "FusedAdam"
    assert before_kill[0]["compute_dtype"] == "float16"
    with open(artifacts / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    losses = [float(r[k]) for r in rows for k in ("train_loss", "val_loss")]
    assert np.isfinite(losses).all()
    assert float(rows[-1]["train_loss"]) < 0.8 * float(rows[0]["train_loss"])
    assert float(rows[-1]["val_loss"]) < float(rows[0]["val_loss"])
    summary = json.loads((artifacts / "run_summary.json").read_text())
    assert summary["bleu_scores"]["test_bleu1"] > 0


def test_float16_resume_restores_the_loss_scale_state(float16_run):
    _, before_kill, after_resume, output = float16_run
    assert "resuming from" in output
    saved = [e for e in before_kill if e["event"] == "epoch_end"][-1]
    assert saved["epoch"] == 1
    # The loss scale's step counter counts the good steps since the scale last changed; a fresh
    # optimizer would start it at 0.
    assert saved["scale_steps"] > 0 and saved["iterations"] > 0
    begin = after_resume[0]
    assert begin["event"] == "begin" and begin["optimizer"] == "LossScaleOptimizer"
    assert (begin["iterations"], begin["loss_scale"], begin["scale_steps"]) == (
        saved["iterations"],
        saved["loss_scale"],
        saved["scale_steps"],
    )
    assert [e["epoch"] for e in after_resume if e["event"] == "epoch_end"] == [2, 3]


@pytest.mark.parametrize("beam_size", [1, 3])
def test_float16_model_decodes_batches_as_single_images(float16_run, beam_size):
    import keras

    from training.evaluation.inference import BeamSearchDecoder
    from training.evaluation.loading import load_trained
    from training.features import FeatureStore

    artifacts = float16_run[0]
    try:
        _, model, tokenizer = load_trained(artifacts)
        assert model.compute_dtype == "float16"
        assert model.init_cache(2)["keys"][0].dtype == "float16"
        features = np.asarray(FeatureStore.open(artifacts).features[:7])
        decoder = BeamSearchDecoder(model, tokenizer, beam_size=beam_size, batch_size=3)  # batches 3, 3, 1
        batched, alone = decoder.decode(features), decoder.decode_one_at_a_time(features)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert [c.tokens for c in batched] == [c.tokens for c in alone]
    assert all(np.isfinite(c.score) for c in batched)
    np.testing.assert_allclose([c.score for c in batched], [c.score for c in alone], rtol=1e-3)
