"""The benchmarks run end to end, at a small scale: `make bench` is the only other thing that runs them.

bench/train.py on the first 240 images of the real Flickr8k captions (both rows, their peers,
decoding), with its stores in a temporary folder; bench/decode.py's own bench model made from 40
demo images, then decoded; bench/scst.py's two stages on 60 of those images; bench/grounding.py's
one epoch of each stage on a 40-image world; bench/extract.py's extraction and training rates on 32
images. The figures are not checked against targets (that is the benchmarks' job): only that each row
ran and reported them.
"""

import importlib.util
import json
from pathlib import Path

import pytest
import yaml
from helpers import REPO, run_python

from training.run.artifacts import FINAL_MODEL

IMAGES = 240  # 0.6 of them train: ~720 captions, 11+ batches of 64, past the bench's 10 warm-up steps


def _first_images(captions_file: Path, images: int, out: Path) -> Path:
    lines = captions_file.read_text(encoding="utf-8").splitlines()
    kept, seen = [lines[0]], set()
    for line in lines[1:]:
        image = line.split(",", 1)[0]
        if image not in seen and len(seen) == images:
            break
        seen.add(image)
        kept.append(line)
    out.write_text("\n".join(kept) + "\n", encoding="utf-8")
    return out


def test_train_bench_runs_both_rows_and_their_peers_on_a_small_store(flickr8k_captions, tmp_path):
    captions = _first_images(flickr8k_captions, IMAGES, tmp_path / "captions.txt")
    done = run_python(
        [
            "bench/train.py",
            "--captions",
            str(captions),
            "--data-dir",
            str(tmp_path / "stores"),
            "--rows",
            "region,pooled",
            "--no-memory",
            "--scale",
            "0",
            "--decode-images",
            "8",
            "--peer-steps",
            "12",
        ],
        timeout=900,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert (tmp_path / "stores" / "w1_x1" / "features.npy").is_file()  # its store, not the repository's bench_data/
    assert report["rows"]["region"]["images_in_store"] == IMAGES
    for name in ("region", "pooled"):
        row = report["rows"][name]
        assert row["batches_trained"] >= 11 and row["steady_captions_per_s"] > 0
        assert row["peer"]["steps"] == 12 and row["peer_captions_per_s"] > 0
        # bf16_matmul_fraction under mixed_bfloat16, fp32_... where the machine computes in float32
        [fraction] = [value for key, value in row.items() if key.endswith("_matmul_fraction") and not key.startswith("peer_")]
        assert row["speedup_vs_peer"] > 0 and 0 < fraction < 1
        assert row["greedy_images_per_s"] > 0 and row["beam3_images_per_s"] > 0
        assert f"{name}_speedup_vs_peer" in report["targets"]
        assert row["peer"]["padding"].startswith("per batch") and row["padded_peer"]["padding"].startswith("every caption")
        assert 0 < row["padded_peer"]["token_efficiency"] < row["peer"]["token_efficiency"] <= 1
    assert set(report["machine"]) >= {"cpu", "amx", "avx512_bf16", "matmul_gflop_per_s_at_start", "load_average_at_start"}


def test_extract_bench_reports_extraction_and_training_rates_with_and_without_fine_tuning():
    done = run_python(["bench/extract.py", "--images", "32", "--repeats", "1"], timeout=900)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 32 and result["pipeline_images_per_s"] > 0
    training = result["training"]
    assert training["fine_tune_from"] == 2 and len(training["prefix_regions"]) == 2
    for key in ("prefix_pipeline_images_per_s", "frozen_train_images_per_s", "fine_tuned_train_images_per_s"):
        assert training[key] > 0, key
    assert training["fine_tuned_over_frozen"] == pytest.approx(
        training["fine_tuned_train_images_per_s"] / training["frozen_train_images_per_s"], rel=0.02
    )


def test_decode_bench_makes_its_model_then_decodes_with_it(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_decode", REPO / "bench" / "decode.py")
    decode = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(decode)
    decode.BENCH_DIR, decode.BENCH_IMAGES, decode.BENCH_EPOCHS = tmp_path / "decode", 40, 1

    artifacts, _ = decode.make_bench_model()
    assert artifacts == tmp_path / "decode" / "artifacts" and decode.finished_run(artifacts)
    model_file = artifacts / FINAL_MODEL
    written = model_file.stat().st_mtime_ns
    assert decode.make_bench_model()[0] == artifacts
    assert model_file.stat().st_mtime_ns == written  # the same recipe: reused, not trained again

    done = run_python(
        ["bench/decode.py", "--artifacts", str(artifacts), "--images", "8", "--batch-size", "4", "--runs", "1"], timeout=900
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["greedy_images_per_s"] > 0 and report["beam3_images_per_s"] > 0
    assert report["image_encoder"] is None  # the bench's model decodes stored features: the ratio is the decoder's


def test_soak_bench_reports_each_interval_and_checks_every_caption(trained_run):
    done = run_python(
        [
            "bench/soak.py",
            "--artifacts",
            str(trained_run[0]),
            "--minutes",
            "0.1",
            "--interval",
            "3",
            "--concurrency",
            "8",
            "--images",
            "8",
        ],
        timeout=600,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert [row["interval"] for row in report["rows"]] == [1, 2]
    assert all(row["requests"] > 0 and row["p99_ms"] >= row["p50_ms"] > 0 and row["rss_mb"] > 100 for row in report["rows"])
    assert report["errors"] == 0  # every answer was 200 and the image's lone caption
    assert set(report["targets_met"]) == {"errors", "rss", "p99"}
    assert report["machine"]["cpu"] and report["machine"]["matmul_gflop_per_s_at_start"]["bfloat16"] > 0


def test_scst_bench_runs_both_stages_on_a_small_store(flickr8k_captions, tmp_path):
    captions = _first_images(flickr8k_captions, IMAGES, tmp_path / "captions.txt")
    done = run_python(
        [
            "bench/scst.py",
            "--captions",
            str(captions),
            "--data-dir",
            str(tmp_path / "stores"),
            "--images",
            "60",
            "--val-images",
            "8",
        ],
        timeout=900,
    )
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert report["xe"]["captions_trained"] == report["scst"]["captions_trained"] == 300  # 60 images x 5
    for stage in ("xe", "scst"):
        assert report[stage]["epoch_seconds"] > 0 and report[stage]["training_memory"]["peak_rss_anon_gb"] > 0
    assert 0 < report["scst"]["steady_step_share"]["reward"] < 1  # sampling and update share one compiled step
    sampling = report["scst"]["sampling"]
    assert 1 <= sampling["sample_length_mean"] <= sampling["loop_steps_per_batch"] <= sampling["max_length"]
    assert set(report["targets"]) == {"scst_epoch_over_xe", "scst_rss_anon_over_xe"}
    assert report["machine"]["cpu"] and report["machine"]["matmul_gflop_per_s_at_start"]["bfloat16"] > 0


def test_grounding_bench_trains_a_recipe_on_a_world_and_reports_each_stage(tmp_path):
    kept = tmp_path / "out" / "earlier" / "run_summary.json"  # an earlier invocation's file: never touched
    kept.parent.mkdir(parents=True)
    kept.write_text('{"mine": true}')
    small = [
        "epochs=1",
        "scst_epochs=1",
        "hidden_dim=32",
        "num_layers=1",
        "ff_dim=64",
        "val_caption_images=4",
        "eval_max_images=8",
    ]
    args = ["bench/grounding.py", "--presets", "hard", "--seeds", "1", "--images", "40", "--out", str(tmp_path / "out")]
    done = run_python([*args, *(a for s in small for a in ("--set", s))], timeout=900)
    report = json.loads(done.stdout.strip().splitlines()[-1])

    assert kept.read_text() == '{"mine": true}'
    work = Path(report["work_dir"])
    assert work.parent == tmp_path / "out" and work.name != "earlier"
    [run] = report["runs"]
    assert (run["config"], run["preset"], run["seed"], run["status"]) == ("config.demo", "hard", 1, "ok")
    assert run["xe_epochs"] == 1 and run["scst_epochs"] == 1 and run["final_model"] in ("xe", "scst") and run["wall_seconds"] > 0
    artifacts = work / "runs" / "config.demo" / "hard_seed1" / "artifacts"
    final = json.loads((artifacts / "predictions_test.json").read_text())
    captions = [c["prediction"] for c in final["captions"]]
    assert run["scst"]["distinct_share"] == len(set(captions)) / len(captions)
    assert run["scst"]["cider"] == final["scores"]["cider"] and run["scst"]["bleu4"] == final["scores"]["coco_bleu4"]
    xe = json.loads((artifacts / f"predictions_{'test_xe' if run['final_model'] == 'scst' else 'test'}.json").read_text())
    assert run["xe"]["cider"] == xe["scores"]["cider"]  # the cross-entropy model's own test scores
    assert 0 <= run["xe"]["object_recall"] <= 1 and set(run["xe"]) == {
        "bleu4",
        "cider",
        "object_precision",
        "object_recall",
        "distinct_share",
    }
    copy = yaml.safe_load((artifacts.parent / "config.yaml").read_text())
    assert copy["seed"] == 1 and copy["features_dir"] is None and copy["epochs"] == 1
    assert copy["scenes_file"] == str(work / "worlds" / "hard_seed1" / "scenes.json")
    assert json.loads((work / "worlds" / "hard_seed1" / "world.json").read_text())["preset"] == "hard"
    median = report["medians"]["config.demo"]["hard"]
    assert median["finished"] == 1 and median["xe"] == run["xe"] and median["scst"] == run["scst"]
    assert report["presets"]["hard"]["min_size"] == 8 and report["machine"]["cpu"]


def test_grounding_bench_refuses_an_unknown_preset_in_one_line(tmp_path):
    done = run_python(["bench/grounding.py", "--presets", "hard,moon", "--out", str(tmp_path)], check=False, timeout=120)
    assert (
        done.returncode == 2
        and done.stderr.strip() == "error: unknown preset 'moon': use one of demo, hard, crowded, tiny, lookalike"
    )
    assert not any(tmp_path.iterdir())


def test_grounding_bench_stops_a_run_at_its_time_limit_and_reports_it(tmp_path):
    args = ["bench/grounding.py", "--presets", "tiny", "--seeds", "2", "--images", "20", "--timeout", "3", "--out", str(tmp_path)]
    report = json.loads(run_python(args, timeout=300).stdout.strip().splitlines()[-1])
    [run] = report["runs"]
    assert run["status"] == "timeout" and 3 <= run["wall_seconds"] < 150 and "xe" not in run
    assert report["medians"]["config.demo"]["tiny"] == {"runs": 1, "finished": 0, "wall_seconds": None, "xe": None, "scst": None}
