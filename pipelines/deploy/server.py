"""A local endpoint with SageMaker's serving contract, calling the model's own inference.py.

    python -m pipelines.deploy.server --model-data model.tar.gz --port 8080 [--host HOST]

- ``GET /ping``: 200 once the model is loaded; 503 with the reason if it failed to load.
- ``POST /invocations``: the request goes through the artifact's ``input_fn`` (in worker
  threads while other requests are in flight; a lone small request is decoded at once),
  requests arriving together are batched into one ``predict_fn`` call (up to ``--max-batch``
  images, waiting at most ``--max-wait-ms`` and only while other requests are being decoded,
  so a lone request is never delayed), and each answer goes through ``output_fn``. Client
  errors (the handlers' ``status_code``: bad content type, undecodable or empty body, too many
  pixels) and oversized bodies get a 4xx JSON error before the request reaches a batch; if a
  batch's forward pass fails anyway, each of its requests is run alone, so only a request the
  model cannot take gets a 5xx. The server keeps serving.
- Memory: after a second without requests, memory freed by large requests is given back to
  the system (glibc's ``malloc_trim``).
- Threads: one model thread runs every forward pass with torch's default thread count (every
  core; ``--model-torch-threads``); ``--threads`` decode threads run torch on one core each
  (``--decode-torch-threads``), so they never start OpenMP teams of their own.

- Slow clients: a connection that has not sent a whole request header within
  ``--header-timeout`` seconds is closed; a body not received within ``--body-timeout`` gets a
  408. A malformed or oversized header gets a 4xx and one line in the log.
- Data capture: with ``--capture-dir``, ``--capture-percent`` of the requests (and their answers,
  errors included) are written as SageMaker's data-capture records under
  ``<capture dir>/<endpoint>/AllTraffic/yyyy/mm/dd/hh/`` (``pipelines.deploy.capture``), by a
  thread of their own, off the request's path; ``python -m pipelines.monitor`` reads them.
- Files: the model is unpacked under ``--workdir`` (default: a temporary folder) and removed
  when the server stops. Started by a deploy (``--record``), the server stops by itself when
  the process that started it ends before the deploy's record names it: nothing is left
  running that no record knows.

Binds to 127.0.0.1 unless told otherwise. Nothing here fetches URLs.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import importlib.util
import logging
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from aiohttp import web

log = logging.getLogger("serving")
MAX_BODY_BYTES = 16 * 2**20
INLINE_DECODE_MAX_BYTES = 512 * 2**10  # decodes in about a millisecond or two
IDLE_TRIM_SECONDS = 1.0
HEADER_TIMEOUT_SECONDS = 30.0
BODY_TIMEOUT_SECONDS = 60.0
ADOPTION_POLL_SECONDS = 0.25
UNPACKING = threading.Lock()  # held while the model archive is extracted
LINGER_SECONDS = 1.0  # reading the unread rest of a refused body, before closing (aiohttp: 10)


def release_free_memory() -> None:
    """Hand memory freed by the last requests back to the system. glibc's malloc keeps freed
    blocks of large bodies and batches for reuse: a server that was busy would stay that large
    (+24-38% RSS after 1,000-10,000 requests in bench/endpoint_load.py) while idle."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to do
        pass


def load_handlers(model_data: str | os.PathLike, workdir: str | os.PathLike):
    """Extract model.tar.gz (safely) and import its code/inference.py as its own module."""
    path = Path(model_data)
    model_dir = path
    if path.is_file():
        import tarfile

        model_dir = Path(workdir) / "model"
        with UNPACKING, tarfile.open(path, "r:*") as tar:
            from breedkit import archives

            model_dir.mkdir(parents=True, exist_ok=True)
            archives.extract(tar, model_dir)
    code = model_dir / "code"
    sys.path.insert(0, str(code))
    spec = importlib.util.spec_from_file_location("endpoint_inference", code / "inference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module, module.model_fn(str(model_dir))


class Batcher:
    """Collects decoded requests and runs them through predict_fn together."""

    def __init__(self, handlers, model, executor, max_batch: int, max_wait: float):
        self.handlers, self.model, self.executor = handlers, model, executor
        self.max_batch, self.max_wait = max_batch, max_wait
        self.queue: asyncio.Queue = asyncio.Queue()
        self.in_flight = 0  # requests accepted and not yet answered (decoding or queued)
        self.batches = 0

    async def predict(self, data: dict) -> tuple[list, int]:
        """The request's predictions and how many images its batch held."""
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((data, future))
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        idle_since_trim = True
        while True:
            try:  # after a second without requests, give freed memory back once
                first = await asyncio.wait_for(self.queue.get(),
                                               None if idle_since_trim else IDLE_TRIM_SECONDS)
            except asyncio.TimeoutError:
                await loop.run_in_executor(self.executor, release_free_memory)
                idle_since_trim = True
                continue
            idle_since_trim = False
            items = [first]
            count = len(items[0][0]["images"])
            deadline = loop.time() + self.max_wait
            # wait for more only while other requests are on their way (being decoded):
            # a lone request is never delayed
            while count < self.max_batch and self.in_flight > len(items):
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    item = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
                items.append(item)
                count += len(item[0]["images"])
            await self._run_batch(loop, items)

    async def _run_batch(self, loop, items) -> None:
        """One forward pass for the batch; if it fails, each request is run alone, so a
        request the model cannot take fails by itself and the others are answered."""
        try:
            answers = await self._predict(loop, items)
        except Exception as exc:  # noqa: BLE001 - answer every waiting request, keep serving
            if len(items) == 1:
                self._settle(items[0][1], exc=exc)
                return
            log.warning("a batch of %d requests failed (%s: %s); running each alone",
                        len(items), type(exc).__name__, exc)
            for item in items:
                try:
                    (mine,) = await self._predict(loop, [item])
                except Exception as exc:  # noqa: BLE001
                    self._settle(item[1], exc=exc)
                else:
                    self._settle(item[1], result=(mine, len(mine)))
            return
        images = sum(len(mine) for mine in answers)
        for (_, future), mine in zip(items, answers):
            self._settle(future, result=(mine, images))

    async def _predict(self, loop, items) -> list[list]:
        """One forward pass over all images of ``items``: each request's predictions (top_k is
        applied per request afterwards)."""
        default_k = getattr(self.handlers, "DEFAULT_TOP_K", 5)
        wanted = [data.get("top_k") or default_k for data, _ in items]
        merged = {"images": [img for data, _ in items for img in data["images"]],
                  "top_k": max(wanted)}
        results = await loop.run_in_executor(self.executor, self.handlers.predict_fn,
                                             merged, self.model)
        self.batches += 1
        answers, start = [], 0
        for (data, _), k in zip(items, wanted):
            mine = results[start:start + len(data["images"])]
            start += len(mine)
            for entry in mine:
                entry["top_k"] = entry["top_k"][:k]
            answers.append(mine)
        return answers

    @staticmethod
    def _settle(future, *, result=None, exc=None) -> None:
        if future.done():  # the client went away
            return
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)


def torch_threads(count: int | None = None) -> None:
    """Fix this thread's torch intra-op thread count (torch's default, every core, if None),
    if the handlers use torch. OpenMP keeps the count per thread, and a thread that has not
    run torch yet takes the count set last by any thread: so the model thread fixes its own
    before the decode threads set theirs. Decode threads use 1: a resize gains nothing from a
    second core, and each decode thread would otherwise bring an OpenMP team of its own to
    fight the forward pass's threads for the cores."""
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.get_num_threads()  # this thread's OpenMP state first, so a count set here sticks
        if count:
            torch.set_num_threads(count)


def load_model_thread(model_data, workdir, count: int | None = None):
    """In the model thread: load the handlers and the model, and fix its thread count."""
    loaded = load_handlers(model_data, workdir)
    torch_threads(count)
    return loaded


def json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "status": status}, status=status)


class OneLineBadRequests(logging.Filter):
    """aiohttp logs a malformed request (an oversized header, a broken request line) with a
    traceback and the client's bytes: make it one line of ours. The client got its 4xx."""

    KNOWN = {"LineTooLong": "a request or header line over the size limit",
             "BadStatusLine": "a malformed request line",
             "InvalidHeader": "a malformed header", "BadHttpMethod": "an unknown method"}

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            remote = record.args[0] if isinstance(record.args, tuple) and record.args else ""
            what = self.KNOWN.get(type(exc).__name__) or \
                " ".join(str(exc.message).split(":", 1)[0].split())[:120]
            record.msg, record.args = "bad request%s (HTTP %s, %s): %s", (
                f" from {remote}" if remote else "", exc.code, type(exc).__name__, what)
            record.exc_info = record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def recorded(record: str, pid: int) -> bool | None:
    """Whether the deploy's endpoint records (``endpoints.sqlite``) name process ``pid``;
    None when they cannot be read just now (busy, being created)."""
    try:
        # read-write (never creating it): a read-only connection cannot open a WAL database
        # whose -shm another process is creating
        db = sqlite3.connect(f"file:{record}?mode=rw", uri=True, timeout=5)
        try:
            return db.execute("SELECT 1 FROM endpoints WHERE pid = ?", (pid,)).fetchone() \
                is not None
        finally:
            db.close()
    except sqlite3.Error:
        return None


async def stop_unless_adopted(record: str, started_by: int, workdir: Path | None) -> None:
    """Until ``record`` names this server, stop it when the process that started it ends (a
    deploy killed before it recorded the server): nothing runs that no record knows."""
    pid = os.getpid()
    while not await asyncio.to_thread(recorded, record, pid):
        # its parent gone, and (asked again after that) still not recorded: abandoned
        if os.getppid() != started_by and \
                await asyncio.to_thread(recorded, record, pid) is False:
            log.warning("the deploy (process %d) that started this server ended before "
                        "recording it: stopping", started_by)
            if workdir is not None:  # once the model is unpacked, not while it is written
                await asyncio.to_thread(UNPACKING.acquire, True, 120)
                shutil.rmtree(workdir, ignore_errors=True)
            logging.shutdown()
            os._exit(0)
        await asyncio.sleep(ADOPTION_POLL_SECONDS)


def make_app(model_data: str, *, max_batch: int = 16, max_wait_ms: float = 5.0,
             threads: int = 4, decode_torch_threads: int = 1, model_torch_threads: int = 0,
             workdir: str | None = None, body_timeout: float = BODY_TIMEOUT_SECONDS,
             record: str | None = None, started_by: int | None = None,
             capture_dir: str | None = None, capture_percent: float = 100.0,
             endpoint_name: str = "local") -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    capture = None
    if capture_dir and capture_percent > 0:
        from pipelines.deploy.capture import Capture

        capture = Capture(capture_dir, endpoint_name, capture_percent)
    executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode",
                                  initializer=torch_threads, initargs=(decode_torch_threads,))
    # one thread runs every forward pass: its OpenMP team stays warm, and batches never
    # compete with each other for the cores
    model_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="model")
    state = {"error": None, "handlers": None, "batcher": None}
    scratch = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="endpoint-"))

    async def watch(app):
        if record:
            app["adoption"] = asyncio.create_task(stop_unless_adopted(
                record, started_by or os.getppid(), Path(workdir) if workdir else None))

    async def startup(app):
        try:
            handlers, model = await asyncio.get_running_loop().run_in_executor(
                model_thread, load_model_thread, model_data, scratch, model_torch_threads)
        except Exception as exc:  # noqa: BLE001 - reported by /ping, the server stays up
            state["error"] = f"model failed to load: {type(exc).__name__}: {exc}"
            log.error(state["error"])
            return
        # a lone small request is decoded on this (the event loop's) thread: it runs torch with
        # the decode threads' count, or its own OpenMP team (every core, spinning after each
        # resize) would take the cores from the forward pass that follows (20 ms of a 40 ms
        # resnet50 forward on 2 cores; bench/endpoint.py). Set after the model thread fixed
        # its own count, which this does not change.
        torch_threads(decode_torch_threads)
        state["handlers"] = handlers
        state["batcher"] = Batcher(handlers, model, model_thread, max_batch, max_wait_ms / 1000)
        app["batch_task"] = asyncio.create_task(state["batcher"].run())

    async def cleanup(app):
        for name in ("batch_task", "adoption"):
            if app.get(name):
                app[name].cancel()
        executor.shutdown(wait=False, cancel_futures=True)
        model_thread.shutdown(wait=False, cancel_futures=True)
        if capture is not None:
            await asyncio.to_thread(capture.close)
        # what this server unpacked goes with it
        shutil.rmtree(scratch / "model" if workdir else scratch, ignore_errors=True)

    async def ping(request):
        if state["error"]:
            return json_error(503, state["error"])
        if state["batcher"] is None:
            return json_error(503, "model loading")
        return web.json_response({"status": "healthy"})

    async def invocations(request):
        if state["batcher"] is None:
            return json_error(503, state["error"] or "model loading")
        handlers, batcher = state["handlers"], state["batcher"]
        try:
            body = await asyncio.wait_for(request.read(), body_timeout)
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"request body over {MAX_BODY_BYTES} bytes")
        except asyncio.TimeoutError:
            response = json_error(408, f"the request body did not arrive within "
                                       f"{body_timeout:g} seconds")
            response.force_close()  # the rest of the body may still come: not a new request
            return response
        content_type = request.headers.get("Content-Type", "")
        accept = request.headers.get("Accept") or "application/json"
        loop = asyncio.get_running_loop()
        # a lone, small request has nothing to overlap with: decode it here and skip two
        # thread hand-offs (~0.4 ms); otherwise decode in a worker while the model runs
        inline = batcher.in_flight == 0 and len(body) <= INLINE_DECODE_MAX_BYTES
        batcher.in_flight += 1
        try:
            if inline:
                data = handlers.input_fn(body, content_type)
            else:
                data = await loop.run_in_executor(executor, handlers.input_fn, body,
                                                  content_type)
            prediction, batch_images = await batcher.predict(data)
            payload = handlers.output_fn(prediction, accept)
        except Exception as exc:  # noqa: BLE001
            status = getattr(exc, "status_code", 500)
            message = getattr(exc, "message", None) or str(exc)
            if status >= 500:
                log.exception("invocation failed")
            response = json_error(status, message)
            if capture is not None:
                capture.offer(body, content_type, response.text)
            return response
        finally:
            batcher.in_flight -= 1
        if capture is not None:
            capture.offer(body, content_type, payload)
        return web.Response(text=payload, content_type="application/json",
                            headers={"X-Batch-Images": str(batch_images)})

    app.router.add_get("/ping", ping)
    app.router.add_post("/invocations", invocations)
    app.on_startup.append(watch)  # first: it watches while the model loads
    app.on_startup.append(startup)
    app.on_cleanup.append(cleanup)
    app["state"] = state
    return app


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.deploy.server",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model-data", required=True, help="model.tar.gz or a model directory")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--max-batch", type=int, default=16)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=4, help="decode threads")
    p.add_argument("--decode-torch-threads", type=int, default=1,
                   help="torch threads of each decode thread (0: torch's default, every core)")
    p.add_argument("--model-torch-threads", type=int, default=0,
                   help="torch threads of the forward pass (0: torch's default, every core)")
    p.add_argument("--workdir", help="where to unpack the model (default: a temporary folder); "
                                     "what the server unpacked is removed when it stops")
    p.add_argument("--header-timeout", type=float, default=HEADER_TIMEOUT_SECONDS,
                   help="seconds a connection may take to send a whole request header (and "
                        "may stay idle between requests)")
    p.add_argument("--body-timeout", type=float, default=BODY_TIMEOUT_SECONDS,
                   help="seconds a request body may take to arrive (then 408)")
    p.add_argument("--record", metavar="ENDPOINTS_SQLITE",
                   help="the deploy's endpoint records: until they name this server, it stops "
                        "when the process that started it ends")
    p.add_argument("--started-by", type=int, help="with --record: that process's id "
                                                  "(default: the parent process)")
    p.add_argument("--capture-dir", help="write SageMaker data-capture records of the requests "
                                         "here (default: no capture)")
    p.add_argument("--capture-percent", type=float, default=100.0,
                   help="with --capture-dir: the share of requests captured, 0 to 100")
    p.add_argument("--endpoint-name", default="local",
                   help="with --capture-dir: the endpoint folder the records go under")
    args = p.parse_args(argv)
    if not 0 <= args.capture_percent <= 100:
        p.error(f"--capture-percent must be 0 to 100, got {args.capture_percent:g}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("aiohttp.server").addFilter(OneLineBadRequests())
    app = make_app(args.model_data, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms,
                   threads=args.threads, decode_torch_threads=args.decode_torch_threads,
                   model_torch_threads=args.model_torch_threads, workdir=args.workdir,
                   body_timeout=args.body_timeout, record=args.record,
                   started_by=args.started_by, capture_dir=args.capture_dir,
                   capture_percent=args.capture_percent, endpoint_name=args.endpoint_name)
    log.info("serving %s on http://%s:%d", args.model_data, args.host, args.port)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None,
                keepalive_timeout=args.header_timeout,
                lingering_time=LINGER_SECONDS)
    return 0


if __name__ == "__main__":
    sys.exit(main())
