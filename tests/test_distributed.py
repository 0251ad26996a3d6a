"""Distribution: MirroredStrategy on two logical CPU devices and two real worker processes on 127.0.0.1."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

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
        run("worker", out, env={"TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": i}})}, background=True)
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
