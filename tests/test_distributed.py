"""Distribution: MirroredStrategy on two logical CPU devices and two real worker processes on 127.0.0.1."""

import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import TRAIN_WITH_CALLBACK, child_env, write_config

SCRIPT = Path(__file__).with_name("distributed_run.py")
REPO = SCRIPT.parents[1]


def run(mode, out_dir, env=None, background=False):
    command = [sys.executable, str(SCRIPT), mode, str(out_dir)]
    environment = dict(os.environ, PYTHONPATH=str(REPO), **(env or {}))
    if background:
        return subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    return out, run("single", out)


def test_mirrored_strategy_matches_single_device(single):
    out, reference = single
    mirrored = run("mirrored", out)
    assert mirrored["replicas"] == 2
    assert len(mirrored["batch_losses"]) == len(reference["batch_losses"]) == 4
    assert mirrored["batch_losses"][0] == pytest.approx(reference["batch_losses"][0], rel=1e-4)
    # Later steps follow from all-reduced gradients (summed in another order): the same run within 1%.
    assert mirrored["batch_losses"] == pytest.approx(reference["batch_losses"], rel=1e-2)


def test_multi_worker_strategy_matches_single_device(single):
    out, reference = single
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    workers = [
        run(
            "worker",
            out,
            env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})},
            background=True,
        )
        for i in range(2)
    ]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate(timeout=300)
        assert worker.returncode == 0, stderr[-3000:]
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert [r["replicas"] for r in results] == [2, 2]
    assert [r["is_chief"] for r in results] == [True, False]
    for result in results:
        assert result["batch_losses"][0] == pytest.approx(reference["batch_losses"][0], rel=1e-4)
    # The monitored val_cider is one value on every worker, or they would stop at different epochs.
    assert results[0]["val_cider"] == results[1]["val_cider"] and len(results[0]["val_cider"]) == 1
    # Only the chief writes the run's artifacts; the other worker's temporary folder is gone at the end.
    assert (out / "artifacts_worker" / "checkpoint.keras").is_file()
    assert results[0]["worker_dir"] is None and results[1]["worker_dir"]
    assert not Path(results[1]["worker_dir"]).exists()


# -- a lost worker ----------------------------------------------------------------------------------
# A user callback is the public way into the training loop; in the worker told so, it dies as a lost machine does.
DIE = """
import os, signal, keras
die_at = os.environ.get("DIE_AT")  # "epoch:batch"
class Fault(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
    def on_train_batch_end(self, batch, logs=None):
        if die_at == f"{self.epoch}:{batch}":
            os.kill(os.getpid(), signal.SIGKILL)
"""


def train_two_workers(config_path, die_at=None):
    """Both workers of a multi-worker run on 127.0.0.1 (worker 1 dies at `die_at`): [(exit code, stderr, when it ended)]."""
    script = "import sys\n" + DIE + TRAIN_WITH_CALLBACK
    cluster = {"worker": [f"127.0.0.1:{p}" for p in free_ports(2)]}
    workers, logs = [], []
    for index in range(2):
        env = child_env(
            TF_CONFIG=json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}),
            TF_DETERMINISTIC_OPS="1",
            TF_ENABLE_ONEDNN_OPTS="0",
            **({"DIE_AT": die_at} if die_at and index else {}),
        )
        logs.append(Path(f"{config_path}.{'losing' if die_at else 'whole'}.worker{index}.log"))
        with open(logs[-1], "w") as log:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-c", script, str(config_path)], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log
                )
            )
    ended, deadline = {}, time.monotonic() + 900
    while len(ended) < 2 and time.monotonic() < deadline:
        ended.update({i: time.monotonic() for i, w in enumerate(workers) if i not in ended and w.poll() is not None})
        time.sleep(0.2)
    for worker in workers:
        worker.kill()
        worker.wait()
    return [(w.returncode, log.read_text(), ended.get(i)) for i, (w, log) in enumerate(zip(workers, logs))]


def test_a_lost_worker_stops_the_other_with_a_message_and_the_rerun_resumes_to_the_same_metrics(tmp_path, demo_data):
    def metrics(artifacts):
        with open(artifacts / "metrics.csv", newline="") as handle:
            return [{k: v for k, v in row.items() if k != "epoch_time_seconds"} for row in csv.DictReader(handle)]

    settings = dict(distribution="multi_worker", epochs=2, eval_max_images=2, beam_size=1, dropout=0.1)
    reference = write_config(tmp_path / "reference.yaml", demo_data, tmp_path / "reference", **settings)
    assert [code for code, _, _ in train_two_workers(reference)] == [0, 0]

    config = write_config(tmp_path / "config.yaml", demo_data, tmp_path / "artifacts", **settings)
    (chief, chief_err, chief_end), (lost, _, lost_end) = train_two_workers(config, die_at="1:1")  # in the last epoch
    assert lost == -9
    assert chief == 1, chief_err[-3000:]
    print(f"the surviving worker stopped {chief_end - lost_end:.1f} s after the other was lost")
    assert chief_end - lost_end < 60
    [line] = [line for line in chief_err.splitlines() if line.startswith("error: ")]
    assert "lost" in line and "resumes from the last completed epoch" in line
    assert [p.name for p in (tmp_path / "artifacts" / "resume").iterdir()] == ["epoch_00001"]

    assert [code for code, _, _ in train_two_workers(config)] == [0, 0]
    assert metrics(tmp_path / "artifacts") == metrics(tmp_path / "reference")
