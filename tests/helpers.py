"""Helpers shared by the end-to-end tests: a tiny demo-based config and running our commands for real."""

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SEED_ARTIFACTS = [
    "image_caption_model_final.keras", "checkpoint.keras", "wordtoix.json", "ixtoword.json", "features.npy",
    "run_summary.json", "metrics.csv", "config_snapshot.json", "logs",
]


def tiny_config(data_dir: Path, artifacts: Path, **overrides) -> dict:
    config = {
        "images_path": str(data_dir / "Images"), "captions_file": str(data_dir / "captions.txt"),
        "glove_path": str(data_dir / "glove.demo.50d.txt"), "artifacts_dir": str(artifacts),
        "word_count_threshold": 1, "feature_extractor": "PatchGrid", "extractor_weights": None,
        "image_size": [32, 32], "feature_dim": 192, "embedding_dim": 50, "train_embeddings": True,
        "hidden_dim": 32, "num_layers": 1, "num_heads": 2, "ff_dim": 64, "dropout": 0.0,
        "batch_size": 32, "epochs": 3, "learning_rate": 0.003, "beam_size": 2, "eval_max_images": 12,
    }
    config.update(overrides)
    return config


def run_python(code_or_args, cwd=REPO, check=True, timeout=600, env=None):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    done = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2", **(env or {})))
    if check:
        assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-5000:]}"
    return done


