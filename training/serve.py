"""HTTP captioning service: concurrent requests are gathered into one batched beam search.

    python -m training.serve --artifacts artifacts/demo [--host 127.0.0.1] [--port 8080]

    POST /caption[?beam=5]   body: one JPEG or PNG (Content-Type image/jpeg or image/png)
                             -> {"caption": "...", "score": -4.2}  (score: sum of log-probabilities)
    POST /caption?details=true  adds "words", "attention" (per word, a weight per image region),
                             "grid" ([rows, columns] of the regions, or null) and "alternatives"
                             (the beam's other hypotheses: [{"caption", "score", "finished"}])
    GET  /health             -> 200 {"status": "ready", "images_captioned": n, "batches": m}
                             (the server listens once the model is loaded and traced)
    GET  /                   a page: drop an image, see its caption, alternatives and attention

Requests that arrive within --max-wait-ms of the first waiting one are decoded together, up to
--max-batch images; a batch is padded to a few fixed sizes, all traced before /health says ready, so
no request pays for tracing (requests with another beam than the run's, or with details, trace theirs
on first use).
Each image gets the caption it would get alone. With --max-queue requests waiting, the next gets 429
at once. Errors are JSON {"error": "..."}: 400 empty or unreadable image, 413 image over
--max-image-bytes or over --max-pixels (read from its header, before decoding), 415 other content types,
422 bad beam or details, 404 unknown route. A port in use is refused (exit 2) before the model loads.
SIGTERM stops accepting connections, answers the requests in flight, then exits.
"""

import asyncio
import io
import logging
import signal
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

from training.cli import MAX_BEAM
from training.data.image_files import DEFAULT_MAX_PIXELS, oversized

log = logging.getLogger(__name__)

IMAGE_TYPES = ("image/jpeg", "image/png")
# A request's beam search holds the decoding thread for every request queued behind it, and each new beam
# value traces its searches on first use; half the commands' limit bounds what one request costs the others.
MAX_REQUEST_BEAM = MAX_BEAM // 2
# Images up to this size are checked on the event loop, larger ones on a thread: a small image's check
# costs about what a thread hand-off does, a large JPEG's many times more (bench/RESULTS.md).
INLINE_CHECK_BYTES = 16 * 1024


class QueueFull(Exception):
    pass


class BadImage(ValueError):
    pass


def check_image_bytes(data: bytes) -> None:
    """Raise BadImage unless `data` is a complete JPEG or PNG image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image_format = image.format
            image.verify()
        with Image.open(io.BytesIO(data)) as image:  # verify() leaves the image unusable: reopen to decode
            image.load()
    except UnidentifiedImageError:
        raise BadImage("the body is not an image Pillow can identify; send JPEG or PNG bytes") from None
    except Exception as error:  # Pillow raises many types for damaged data; all mean "bad image"
        raise BadImage(f"the body is not a readable JPEG or PNG image ({type(error).__name__}: {error})") from None
    if image_format not in ("JPEG", "MPO", "PNG"):
        raise BadImage(f"the body is a {image_format} image; send JPEG or PNG")


class Batcher:
    """Gathers requests into batches and captions each batch on one worker thread."""

    def __init__(self, captioner, max_batch: int, max_wait_ms: float, max_queue: int):
        self.captioner, self.max_batch, self.max_wait, self.max_queue = captioner, max_batch, max_wait_ms / 1000, max_queue
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="captioner")  # TensorFlow work, in order
        self.queue: asyncio.Queue | None = None
        self.waiting = 0  # accepted requests not answered yet
        self.batches = self.captioned = 0

    async def start(self):
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self.worker, self.captioner.warm_up, None, self.max_batch)
        self.queue = asyncio.Queue()
        self.task = asyncio.create_task(self.run())
        from training.captioner import batch_sizes

        log.info("ready: batch sizes %s traced", ", ".join(map(str, batch_sizes(self.max_batch))))

    async def stop(self):
        self.task.cancel()
        self.worker.shutdown(wait=True)

    async def caption(self, data: bytes, beam: int | None, details: bool = False):
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting (--max-queue {self.max_queue}); retry shortly")
        self.waiting += 1
        try:
            future = asyncio.get_running_loop().create_future()
            self.queue.put_nowait((data, (beam, details), future))
            return await future
        finally:
            self.waiting -= 1

    async def run(self):
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.max_wait
            while len(batch) < self.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                except asyncio.TimeoutError:
                    break
            for key in dict.fromkeys(key for _, key, _ in batch):  # one search per (beam, details)
                items = [item for item in batch if item[1] == key]
                results = await loop.run_in_executor(self.worker, self.caption_batch, [data for data, _, _ in items], *key)
                self.batches, self.captioned = self.batches + 1, self.captioned + len(items)
                for (_, _, future), result in zip(items, results):
                    if future.done():  # the client went away
                        continue
                    if isinstance(result, Exception):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def caption_batch(self, images: list[bytes], beam: int | None, details: bool = False) -> list:
        import tensorflow as tf

        try:
            return self.captioner.caption(
                images, beam_size=beam, max_batch=self.max_batch, attention=details, alternatives=details
            )
        except tf.errors.InvalidArgumentError:
            if len(images) == 1:
                return [BadImage("TensorFlow cannot decode the image; re-save it as JPEG or PNG")]
            # One image TensorFlow could not decode (Pillow read it): caption the others, each alone.
            return [self.caption_batch([image], beam, details)[0] for image in images]
        except Exception as error:  # answered as a 500 with its traceback in the server log
            log.exception("captioning a batch of %d failed", len(images))
            return [error] * len(images)


def create_app(
    captioner,
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    max_queue: int = 256,
    max_image_bytes: int = 10 * 2**20,
    max_pixels: int = DEFAULT_MAX_PIXELS,
):
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    batcher = Batcher(captioner, max_batch, max_wait_ms, max_queue)

    @asynccontextmanager
    async def lifespan(app):
        # uvicorn listens only once this start-up (tracing every padded batch size) is over; a failure
        # stops the server with its traceback.
        await batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="captioner", lifespan=lifespan)
    app.state.batcher = batcher

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        if exc.status_code in (404, 405):
            return error(
                exc.status_code,
                f"no route {request.method} {request.url.path}; the routes are POST /caption, GET /health and GET /",
            )
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return error(422, problems)

    @app.get("/health")
    async def health():
        return {"status": "ready", "images_captioned": batcher.captioned, "batches": batcher.batches}

    add_page(app)

    @app.post("/caption")
    async def caption(request: Request, beam: int | None = Query(None, ge=1, le=MAX_REQUEST_BEAM), details: bool = False):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in IMAGE_TYPES:
            return error(415, f"Content-Type must be image/jpeg or image/png, got {content_type or 'none'!r}")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_image_bytes:
            return error(413, f"the image is {declared} bytes; the limit is {max_image_bytes} (--max-image-bytes)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_image_bytes:
                return error(413, f"the image is over {max_image_bytes} bytes (--max-image-bytes)")
        if not body:
            return error(400, "empty body: send the image's bytes")
        too_large = oversized(io.BytesIO(body), max_pixels)  # the header only: a small file can declare gigapixels
        if too_large:
            return error(413, f"the image is {too_large}")
        try:
            if len(body) > INLINE_CHECK_BYTES:
                await run_in_threadpool(check_image_bytes, bytes(body))
            else:
                check_image_bytes(bytes(body))
            result = await batcher.caption(bytes(body), beam, details)
        except BadImage as problem:
            return error(400, str(problem))
        except QueueFull as problem:
            return error(429, str(problem))
        answer = {"caption": result.text, "score": result.score}
        return answer | caption_details(result, captioner) if details else answer

    return app


# ---- the page: GET / (training/web, static files; it calls POST /caption?details=true) --------------

WEB = Path(__file__).parent / "web"


def add_page(app) -> None:
    """GET / answers the page; its script and style are under /web/."""
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app.mount("/web", StaticFiles(directory=WEB), name="web")
    app.get("/", include_in_schema=False)(lambda: FileResponse(WEB / "index.html"))


def caption_details(result, captioner) -> dict:
    """What the page draws: each word with its attention over the regions, the grid they form, the beam's
    alternatives. Attention is rounded to 4 decimals: 10 words over 64 regions answer in ~14 KB."""
    vocabulary = captioner.tokenizer.vocabulary
    attention = result.attention.round(4)
    grid = tuple(captioner.extractor.grid_shape)
    return {
        "words": [vocabulary[t] for t in result.tokens],
        "attention": attention.tolist(),
        # Regions that are no grid over the image (one pooled vector: use_regions false) draw no map.
        "grid": list(grid) if grid[0] * grid[1] == attention.shape[-1] else None,
        "alternatives": [{"caption": c.text, "score": c.score, "finished": c.finished} for c in result.alternatives or ()],
    }


def main(argv: list[str] | None = None) -> int:
    from training import cli

    parser = cli.parser("training.serve", __doc__)
    parser.add_argument("--artifacts", required=True, type=Path, help="artifacts_dir of a trained run")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--max-batch", type=cli.int_range(1), default=32, help="most images decoded together (default 32)")
    parser.add_argument(
        "--max-wait-ms", type=float, default=5.0, help="how long a request waits for others to share its batch (default 5)"
    )
    parser.add_argument("--max-queue", type=cli.int_range(1), default=256, help="requests waiting before 429 (default 256)")
    parser.add_argument("--max-image-bytes", type=cli.int_range(1), default=10 * 2**20, help="largest body (default 10 MiB)")
    parser.add_argument(
        "--max-pixels",
        type=cli.int_range(1),
        default=DEFAULT_MAX_PIXELS,
        help="largest image, width x height, checked before decoding (default %(default)s)",
    )
    args = parser.parse_args(argv)
    if args.max_wait_ms < 0:
        parser.error("--max-wait-ms must be >= 0")

    cli.start(args.log_level, import_tensorflow=False)  # a port in use is told before TensorFlow loads
    return cli.run(lambda: _serve(args))


def check_port_free(host: str, port: int) -> None:
    """UserInputError when `port` on `host` cannot be listened on (as uvicorn will: SO_REUSEADDR)."""
    from training.errors import UserInputError

    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as error:
        raise UserInputError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; "
            "stop what uses that port, or pass --port with another one"
        ) from None


def _serve(args) -> int:
    import uvicorn

    from training.utils.logging import import_tensorflow_quietly

    check_port_free(args.host, args.port)  # before seconds of loading and tracing
    import_tensorflow_quietly()
    from training.captioner import Captioner

    captioner = Captioner.from_artifacts(args.artifacts)
    app = create_app(captioner, args.max_batch, args.max_wait_ms, args.max_queue, args.max_image_bytes, args.max_pixels)
    log.info("tracing %s, then serving on http://%s:%d", args.artifacts, args.host, args.port)
    # uvicorn shuts down gracefully on SIGTERM and SIGINT, then raises the signal again: exit quietly then.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    except KeyboardInterrupt:
        return 130
    log.info("stopped")
    return 0


if __name__ == "__main__":
    from training.serve import main as imported_main  # run as training.serve: its logger is named so

    sys.exit(imported_main())
