"""A trained run leaves the pipeline: Captioner .keras file, SavedModel export and the HTTP service.

One tiny run, one export and one server are shared by the whole module; every check runs real
processes (a fresh interpreter for load_model, one that cannot import `training` for the SavedModel,
`python -m training.serve` on 127.0.0.1 for the service, curl for the README's call).
"""

import asyncio
import json
import re
import shlex
import signal
import subprocess
import threading
import time
import zipfile

import httpx
import pytest
from helpers import BLOCK_TRAINING, REPO, run_python, serving
from PIL import Image

IMAGES = 20


@pytest.fixture(scope="module")
def run(trained_run):
    return trained_run[0]


@pytest.fixture(scope="module")
def images(demo_data):
    return sorted(str(p) for p in (demo_data / "Images").glob("*.png"))[:IMAGES]


@pytest.fixture(scope="module")
def jpeg(images, tmp_path_factory):
    path = tmp_path_factory.mktemp("jpeg") / "one.jpg"
    Image.open(images[0]).convert("RGB").save(path, quality=95)
    return str(path)


@pytest.fixture(scope="module")
def reference(run, images, jpeg):
    """What `python -m training.caption` says for each image: {path: (caption, score)}."""
    done = run_python(["-m", "training.caption", *images, jpeg, "--artifacts", str(run), "--json"])
    return {r["image"]: (r["caption"], r["score"]) for r in json.loads(done.stdout)}


@pytest.fixture(scope="module")
def exported(run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "demo"
    done = run_python(["-m", "training.export", "--artifacts", str(run), "--out", str(out)])
    assert "saved_model" in done.stdout
    return out


def test_load_model_in_a_fresh_process_gives_the_same_captions(exported, images, reference):
    assert sorted(p.name for p in exported.iterdir()) == ["captioner.keras", "saved_model"]  # nothing beside it
    with zipfile.ZipFile(exported / "captioner.keras") as archive:  # the vocabulary travels inside the file
        [vocabulary] = [name for name in archive.namelist() if name.endswith("vocabulary.txt")]
        words = archive.read(vocabulary).decode().split()
    assert words[:2] == ["<pad>", "<unk>"] and "startseq" in words and "endseq" in words
    code = f"""
import json, sys
import keras, numpy as np
from PIL import Image
from training import Captioner

captioner = keras.saving.load_model({str(exported / "captioner.keras")!r})
assert isinstance(captioner, Captioner), type(captioner)
paths = {images!r}
from_files = captioner.caption(paths)
from_bytes = captioner.caption([open(p, "rb").read() for p in paths])
pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in paths])
from_pixels = captioner.caption(pixels)
from_features = captioner.caption(captioner.features(paths))
with_attention = captioner.caption(paths[:1], attention=True)[0]
print(json.dumps(dict(
    files=[[c.text, c.score] for c in from_files],
    others=[[c.text for c in found] for found in (from_bytes, from_pixels, from_features)],
    attention=list(with_attention.attention.shape), words=len(with_attention.tokens),
    no_attention=from_files[0].attention is None)))
"""
    found = json.loads(run_python(code).stdout.splitlines()[-1])
    texts = [reference[p][0] for p in images]
    assert [text for text, _ in found["files"]] == texts
    assert [score for _, score in found["files"]] == pytest.approx([reference[p][1] for p in images], abs=1e-5)
    assert found["others"] == [texts] * 3  # bytes, a uint8 batch and float16 features: one way to caption
    assert found["attention"] == [found["words"], 16] and found["no_attention"]


def test_saved_model_without_training_matches_the_caption_command(exported, images, jpeg, reference):
    code = (
        BLOCK_TRAINING
        + f"""
import json
import tensorflow as tf
serve = tf.saved_model.load({str(exported / "saved_model")!r}).signatures["serving_default"]
paths = {images!r}
def run(batch):
    out = serve(images=tf.constant([open(p, "rb").read() for p in batch], tf.string))
    return [[c.decode(), float(s)] for c, s in zip(out["captions"].numpy(), out["scores"].numpy())]
print(json.dumps(dict(batch=run(paths), many=run(paths * 4), alone=run(paths[:1]), none=run([]),
                      jpeg=run([{jpeg!r}]), modules=sorted(m for m in sys.modules if m.startswith("training")))))
"""
    )
    found = json.loads(run_python(code).stdout.splitlines()[-1])
    assert found["modules"] == []
    assert [text for text, _ in found["batch"]] == [reference[p][0] for p in images]
    assert [score for _, score in found["batch"]] == pytest.approx([reference[p][1] for p in images], abs=1e-5)
    # 80 images: a full padded batch and a smaller one. Captions are the same whatever the batch;
    # scores to float32 rounding (matmuls of another shape may sum in another order).
    for batch in ("many", "alone"):
        assert [text for text, _ in found[batch]] == [text for text, _ in found["batch"] * 4][: len(found[batch])]
        assert [s for _, s in found[batch]] == pytest.approx([s for _, s in found["batch"] * 4][: len(found[batch])], rel=1e-5)
    assert found["none"] == []
    assert found["jpeg"][0][0] == reference[jpeg][0]  # JPEG decoding in the graph is the pipeline's
    shown = subprocess.run(
        [str(REPO / ".venv" / "bin" / "saved_model_cli"), "show", "--dir", str(exported / "saved_model"), "--all"],
        capture_output=True,
        text=True,
    )
    if shown.returncode == 0:  # saved_model_cli comes with TensorFlow; the signature as TF Serving sees it
        signature = shown.stdout.split("signature_def['serving_default']")[1]
        assert "inputs['images']" in signature and "DT_STRING" in signature
        assert "outputs['captions']" in signature and "outputs['scores']" in signature


def test_export_refuses_to_replace_an_export(run, exported):
    before = (exported / "captioner.keras").stat().st_mtime_ns
    done = run_python(["-m", "training.export", "--artifacts", str(run), "--out", str(exported)], check=False)
    assert done.returncode == 2 and "captioner.keras" in done.stderr and "another --out" in done.stderr
    assert (exported / "captioner.keras").stat().st_mtime_ns == before


# ---- the HTTP service --------------------------------------------------------------------------------

MAX_QUEUE, MAX_IMAGE_BYTES = 128, 100_000


@pytest.fixture(scope="module")
def server(run):
    with serving(run, "--max-queue", str(MAX_QUEUE), "--max-image-bytes", str(MAX_IMAGE_BYTES)) as (url, process):
        yield url, process


def post(url, path, beam=None, client=httpx):
    data = open(path, "rb").read()
    return client.post(
        url + "/caption", content=data, params={"beam": beam} if beam else None, headers={"Content-Type": "image/png"}, timeout=60
    )


async def post_all(url, paths, limit=None):
    limits = httpx.Limits(max_connections=limit, max_keepalive_connections=limit)
    async with httpx.AsyncClient(limits=limits, timeout=120) as client:
        return await asyncio.gather(
            *(client.post(url + "/caption", content=open(p, "rb").read(), headers={"Content-Type": "image/png"}) for p in paths)
        )


def test_concurrent_requests_get_the_captions_of_one_at_a_time(server, images, reference):
    url, _ = server
    alone = {}
    with httpx.Client() as client:
        for path in images:
            response = post(url, path, client=client)
            assert response.status_code == 200, response.text
            alone[path] = response.json()
    assert {p: a["caption"] for p, a in alone.items()} == {p: reference[p][0] for p in images}
    before = httpx.get(url + "/health").json()
    paths = [images[i % len(images)] for i in range(100)]
    responses = asyncio.run(post_all(url, paths, limit=100))
    assert [r.status_code for r in responses] == [200] * 100
    assert [r.json()["caption"] for r in responses] == [alone[p]["caption"] for p in paths]
    # Scores to float32 rounding: a batch's matmuls may sum in another order than one image's.
    assert [r.json()["score"] for r in responses] == pytest.approx([alone[p]["score"] for p in paths], rel=1e-5)
    after = httpx.get(url + "/health").json()
    assert after["images_captioned"] - before["images_captioned"] == 100
    assert after["batches"] - before["batches"] < 50  # concurrent requests were decoded together


def test_each_bad_input_gets_its_4xx_and_the_next_good_request_succeeds(server, images, reference):
    url, _ = server
    good, expected = images[3], reference[images[3]][0]
    cases = [
        ("POST", "/caption", b"this is no image", "image/png", None, 400, "not an image"),
        ("POST", "/caption", open(images[0], "rb").read()[:60], "image/png", None, 400, "not a readable"),
        ("POST", "/caption", b"", "image/jpeg", None, 400, "empty body"),
        ("POST", "/caption", b"\xff" * (MAX_IMAGE_BYTES + 1), "image/jpeg", None, 413, str(MAX_IMAGE_BYTES)),
        ("POST", "/caption", open(good, "rb").read(), "text/plain", None, 415, "image/jpeg or image/png"),
        ("POST", "/caption", open(good, "rb").read(), "image/png", {"beam": 11}, 422, "beam"),
        ("POST", "/caption", open(good, "rb").read(), "image/png", {"beam": "wide"}, 422, "beam"),
        ("GET", "/captions", None, None, None, 404, "no route GET /captions"),
        ("GET", "/caption", None, None, None, 405, "POST /caption"),
    ]
    gif = images[0] + ".gif"
    Image.open(images[0]).save(gif)
    cases.append(("POST", "/caption", open(gif, "rb").read(), "image/png", None, 400, "GIF"))
    with httpx.Client(timeout=60) as client:
        for method, route, body, content_type, params, status, words in cases:
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.request(method, url + route, content=body, headers=headers, params=params)
            assert response.status_code == status, (route, content_type, params, response.text)
            assert words in response.json()["error"], response.text
            after = post(url, good, client=client)
            assert after.status_code == 200 and after.json()["caption"] == expected
        wider = post(url, good, beam=5, client=client)
        assert wider.status_code == 200 and isinstance(wider.json()["score"], float)


def test_a_full_queue_answers_429_at_once(server, images, reference):
    url, _ = server
    paths = [images[i % len(images)] for i in range(4 * MAX_QUEUE)]
    responses = asyncio.run(post_all(url, paths))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429} and statuses.count(429) >= MAX_QUEUE, statuses
    for path, response in zip(paths, responses):
        if response.status_code == 429:
            assert "--max-queue" in response.json()["error"]
        else:
            assert response.json()["caption"] == reference[path][0]
    assert post(url, images[0]).json()["caption"] == reference[images[0]][0]


def readme_section(title):
    text = (REPO / "README.md").read_text()
    return text.split(f"## {title}")[1].split("\n## ")[0]


def test_the_readme_curl_call(server, images, tmp_path):
    url, _ = server
    [call] = [line for line in readme_section("Ship a model").splitlines() if line.startswith("curl ") and "/caption" in line]
    Image.open(images[5]).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    args = [a.replace("http://127.0.0.1:8080", url) for a in shlex.split(call)]
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    expected = post(url, tmp_path / "photo.jpg").json()  # posted as image/png: the type only gates, bytes decide
    assert answer["caption"] and answer["caption"] == expected["caption"]
    assert answer["score"] == pytest.approx(expected["score"], rel=1e-5)


def test_the_readme_captioner_example_runs(run, images, tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", readme_section("Ship a model"), flags=re.S)
    [example] = [b for b in blocks if "Captioner" in b]
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "demo").symlink_to(run)
    Image.open(images[5]).convert("RGB").save(tmp_path / "photo.jpg", quality=95)
    done = run_python(example, cwd=tmp_path)
    assert done.stdout.strip() and (tmp_path / "captioner.keras").is_file()


def test_sigterm_answers_the_requests_in_flight_then_exits(server, images, reference):
    url, process = server
    data = open(images[7], "rb").read()
    half_sent, finish = threading.Event(), threading.Event()

    def slow_body():  # the request is on the wire when SIGTERM arrives: its body is half sent
        yield data[: len(data) // 2]
        half_sent.set()
        finish.wait(30)
        yield data[len(data) // 2 :]

    answers = {}

    def send():
        answers["slow"] = httpx.post(url + "/caption", content=slow_body(), headers={"Content-Type": "image/png"}, timeout=60)

    sender = threading.Thread(target=send)
    sender.start()
    assert half_sent.wait(30)
    time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    with pytest.raises(httpx.TransportError):  # no new connections once shutting down
        httpx.get(url + "/health", timeout=5)
    finish.set()
    sender.join(60)
    assert answers["slow"].status_code == 200 and answers["slow"].json()["caption"] == reference[images[7]][0]
    assert process.wait(60) == 0
    log = process.stdout.read()
    assert "Traceback" not in log, log
