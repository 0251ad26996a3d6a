"""The page `training.serve` answers GET / with: the JSON it draws from, and the page itself in a real
headless Chromium (the system's, driven by playwright), against the real service on 127.0.0.1."""

import base64
import json
import shutil

import httpx
import pytest
from helpers import REPO, run_python, serving
from PIL import Image

IMAGES = 4
# No network here: nothing in the background may try to reach one (see scripts/render_report.py).
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def server(trained_run):
    with serving(trained_run[0]) as (url, _):
        yield url


@pytest.fixture(scope="module")
def images(demo_data):
    return sorted(str(p) for p in (demo_data / "Images").glob("*.png"))[:IMAGES]


@pytest.fixture(scope="module")
def reference(trained_run, images):
    """What `python -m training.caption` says for each image (the run's beam): {path: caption}."""
    done = run_python(["-m", "training.caption", *images, "--artifacts", str(trained_run[0]), "--json"])
    return {r["image"]: r["caption"] for r in json.loads(done.stdout)}


def caption(url, path, **params):
    response = httpx.post(
        url + "/caption", content=open(path, "rb").read(), params=params, headers={"Content-Type": "image/png"}, timeout=120
    )
    assert response.status_code == 200, response.text
    return response.json()


def test_details_add_words_attention_grid_and_the_beams_alternatives(server, images, reference):
    for path in images:
        plain, detailed = caption(server, path), caption(server, path, details="true")
        assert set(plain) == {"caption", "score"}  # the plain answer is unchanged
        assert detailed["caption"] == plain["caption"] == reference[path]
        assert detailed["score"] == pytest.approx(plain["score"], rel=1e-5)
        assert detailed["words"] == detailed["caption"].split()
        assert detailed["grid"] == [4, 4]  # tiny_config: 32 px images in 8 px patches
        assert [len(row) for row in detailed["attention"]] == [16] * len(detailed["words"])
        for row in detailed["attention"]:  # a distribution over the regions (rounded to 4 decimals)
            assert min(row) >= 0 and sum(row) == pytest.approx(1, abs=2e-3)
        assert len(detailed["alternatives"]) <= 1  # the run's beam is 2
    wide = caption(server, images[0], details="true", beam=5)
    hypotheses = [(wide["caption"], True)] + [(a["caption"], a["finished"]) for a in wide["alternatives"]]
    assert 1 <= len(wide["alternatives"]) <= 4 and len(set(hypotheses)) == len(hypotheses)
    scores = [wide["score"]] + [a["score"] for a in wide["alternatives"]]
    assert scores == sorted(scores, reverse=True)  # best first (length_penalty 0: by the sum of log-probs)
    assert caption(server, images[0], details="true", beam=1)["alternatives"] == []  # greedy has none


def test_the_page_and_its_files_are_served(server):
    page = httpx.get(server + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/web/page.js"' in page.text and 'href="/web/page.css"' in page.text
    for name, kind in (("page.js", "javascript"), ("page.css", "text/css")):
        response = httpx.get(f"{server}/web/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    missing = httpx.get(server + "/web/nope.js")
    assert missing.status_code == 404 and "no route GET /web/nope.js" in missing.json()["error"]


# Per region of the chosen word's overlay: the alpha at the centre of its cell (page.js draws 90 + 130 * weight / most).
REGION_ALPHAS = """([rows, columns]) => {
    const canvas = document.getElementById("overlay");
    const pixels = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height).data;
    const alpha = (x, y) => pixels[4 * (Math.floor(y) * canvas.width + Math.floor(x)) + 3];
    const cells = [];
    for (let r = 0; r < rows; r++)
        for (let c = 0; c < columns; c++)
            cells.push(alpha((c + 0.5) * canvas.width / columns, (r + 0.5) * canvas.height / rows));
    let drawn = 0;
    for (let i = 3; i < pixels.length; i += 4) drawn += pixels[i] > 0;
    return {cells, drawn};
}"""


# A DataTransfer holding one PNG file (base64), as a drop from the desktop brings.
DROPPED_FILE = """(data) => {
    const transfer = new DataTransfer();
    const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
    transfer.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
    return transfer;
}"""


@pytest.fixture(scope="module")
def chromium():
    """The system's Chromium and playwright's API to drive it; checked before the service starts."""
    path = shutil.which("chromium")
    if not path:
        pytest.skip("chromium not installed (apt-get install chromium): page test skipped")
    return path, pytest.importorskip("playwright.sync_api", reason="playwright not installed (pip install -e '.[dev]')")


def test_the_page_captions_an_uploaded_image_and_draws_each_words_attention(chromium, server, images, reference, tmp_path):
    chromium, sync_api = chromium
    path = images[1]
    expected = caption(server, path, details="true")
    broken = tmp_path / "broken.png"
    broken.write_bytes(open(path, "rb").read()[:60])
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            tmp_path / "profile",
            executable_path=chromium,
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 720},
        )
        try:
            page = browser.new_page()
            problems = []
            page.on("pageerror", lambda error: problems.append(str(error)))
            # Chromium itself logs the rejected upload's 400 as a console error, when it likes: not the page's.
            page.on(
                "console",
                lambda message: message.type == "error" and "status of 400" not in message.text and problems.append(message.text),
            )
            page.goto(server + "/")
            assert page.title() == "Captioner" and page.is_visible("#drop-text") and not page.is_visible("#image")

            page.set_input_files("#file", str(broken))  # the service's 400 is shown, not swallowed
            page.wait_for_selector("#error:not([hidden])")
            assert "400" in page.inner_text("#error") and "not a readable" in page.inner_text("#error")
            assert page.is_visible("#drop-text") and not page.is_visible("#image")  # the zone asks again

            page.set_input_files("#file", path)
            page.wait_for_function("document.getElementById('caption').textContent.length > 0", timeout=60_000)
            assert page.inner_text("#caption") == reference[path] == expected["caption"]
            assert not page.is_visible("#error")
            assert page.locator("#words .chip").all_inner_texts() == expected["words"]
            assert page.locator("#alternatives li span:first-child").all_inner_texts() == [
                a["caption"] + ("" if a["finished"] else " …") for a in expected["alternatives"]
            ]
            assert page.evaluate("document.getElementById('image').naturalWidth") > 0

            grid, attention, chips = expected["grid"], expected["attention"], page.locator("#words .chip")

            def shows(weights):  # the overlay is drawn, and draws these weights cell by cell
                overlay, most = page.evaluate(REGION_ALPHAS, grid), max(weights)
                return overlay["drawn"] > 0 and overlay["cells"] == pytest.approx([90 + 130 * w / most for w in weights], abs=12)

            assert page.evaluate(REGION_ALPHAS, grid)["drawn"] == 0  # no word chosen: a clear overlay
            for index, weights in enumerate(attention[:3]):
                chips.nth(index).click()
                assert chips.nth(index).get_attribute("aria-pressed") == "true" and shows(weights)
            chips.nth(0).hover()
            assert shows(attention[0])  # hovering shows a word without choosing it
            page.mouse.move(0, 0)
            assert shows(attention[min(3, len(attention)) - 1])  # leaving it shows the chosen word again

            dropped = images[2]  # a file dropped on the zone is captioned as a chosen one
            data = page.evaluate_handle(DROPPED_FILE, base64.b64encode(open(dropped, "rb").read()).decode())
            shown = page.get_attribute("#image", "src")
            page.dispatch_event("#drop", "drop", {"dataTransfer": data})
            assert page.get_attribute("#image", "src") != shown  # captions may repeat: the image must not
            page.wait_for_function("(text) => document.getElementById('caption').textContent === text", arg=reference[dropped])
            assert page.evaluate(REGION_ALPHAS, grid)["drawn"] == 0  # a new image: no word chosen yet
            assert problems == []
        finally:
            browser.close()


def test_the_readme_shows_the_page_and_the_details_option():
    serving_section = (REPO / "README.md").read_text().split("## Ship a model")[1].split("\n## ")[0]
    assert "](docs/page.png)" in serving_section and "?details=true" in serving_section
    with Image.open(REPO / "docs" / "page.png") as shot:
        assert shot.format == "PNG" and shot.width >= 800
    assert (REPO / "docs" / "page.png").stat().st_size < 200_000
