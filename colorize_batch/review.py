"""``colorize-batch review OUT``: a local web server to correct a finished run's colours.

It serves the review gallery of the run (:func:`~colorize_batch.gallery.collect_site` and the
gallery's own template, in its live mode) and an editor: a click on a photo adds a colour hint
there and the photo comes back re-colorized at display size; points can be moved, recoloured
and removed; at a point the model's most likely distinct colours are offered
(:func:`~colorize_batch.suggestions.distinct_colours`); "accept" writes the photo's hint file and its output.

- The model is loaded once at start; the photo being edited is decoded once (the same
  :class:`~colorize_batch.batch_transport.DecodeDataset` item ``run`` decodes) and kept.
- A preview goes through ``run``'s own stages: :func:`~colorize_batch.stages.predict_planes`
  (hint planes, forward pass, global tint, chroma planes), then the fast recombination
  (:func:`~colorize_batch.recombination.ycbcr_planes`: the scan's own grey levels as luma,
  the chroma upsampled) on the grey levels reduced once to display size.
- "Accept" writes the hint file where the run looks for it (:func:`~colorize_batch.hints.hints_path_for`,
  beside the scan or under ``--hints DIR``), then the output with
  :func:`~colorize_batch.stages.render_result` and records it with the run's
  :class:`~colorize_batch.stages.ResultSink` and :class:`~colorize_batch.manifest.Manifest`, keyed
  exactly as :func:`~colorize_batch.planning.plan_run` keys it: a later ``run`` with the same
  settings finds the photo up to date.
- The server holds the run's lock (:class:`~colorize_batch.manifest.RunLock`) while it serves,
  so a ``run`` or a second ``review`` of OUT meanwhile exits 75.

Safety: it listens on 127.0.0.1 only; every request needs the random token of the address it
prints (``?token=``, or the cookie the first page sets); photos are named in requests by their
manifest key and files are served by their position in the gallery, so no path a client sends
is ever opened; request bodies are bounded (:data:`MAX_BODY_BYTES`); names reach the page
through the gallery's escaping.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import socket
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .color import grey_to_lightness
from .config import PipelineConfig
from .batch_transport import DecodeDataset, DecodedItem
from .decoding import to_8bit
from .encoding import jpeg_from_planes
from .discovery import WorkItem
from .exit_codes import ExitCode
from .gallery import ItemFiles, NoManifestError, Site, collect_site, render_page
from .hints import HintError, Hints, hints_path_for, parse_hints
from .inference import Colorizer, InferenceError, resolve_device
from .manifest import (LockedError, Manifest, RunIdentity, RunLock, StateError, StateLinkError, fingerprint, has_manifest,
                       manifest_path, shard_tag, sharded_job)
from .names import display
from .planning import Job, tiff_page_count, with_hints
from .recombination import ycbcr_planes
from .reporting import RunStats
from .sharding import shard_of
from .signals import StopFlag
from .stages import ResultSink, Status, network_hints, network_squares, predict_planes, render_result
from .suggestions import distinct_colours, swatch_hex
from .weights import WeightsError, check_size, load_weights
from .safe_files import atomic_write_text, file_sha256, leads_outside, target_problem

log = logging.getLogger("colorize_batch")

HOST = "127.0.0.1"
TOKEN_COOKIE = "colorize-batch-review"
MAX_BODY_BYTES = 64 * 1024  # a request's JSON: 1000 hint points fit in about 60 KB
PREVIEW_LONG_SIDE = 1024  # the editor's image, pixels on its long side
PREVIEW_QUALITY = 85


class ReviewError(Exception):
    """The review cannot start (usage): the message says why."""


class NotFound(Exception):
    """No such photo or file in this run (HTTP 404)."""


class BadRequest(ValueError):
    """A request the server cannot act on; the message says why (HTTP 400)."""


# --------------------------------------------------------------------------- the editing back end


@dataclass
class Editing:
    """The photo being edited, decoded once: ``run``'s decoded item and its display-size grey levels."""

    key: str
    item: DecodedItem
    display: np.ndarray  # (h, w) uint8, long side at most PREVIEW_LONG_SIDE


def display_grey(item: DecodedItem, long_side: int = PREVIEW_LONG_SIDE) -> np.ndarray:
    """The full-resolution grey levels as 8-bit, reduced to fit ``long_side`` (never enlarged)."""
    assert item.grey is not None
    grey = item.grey.numpy()
    im = Image.fromarray(to_8bit(grey) if item.bits == 16 else grey)
    im.thumbnail((long_side, long_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(im)


def _unit(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not 0 <= value <= 1:
        raise BadRequest(f"{name} must be a number from 0 to 1")
    return float(value)


class Reviewer:
    """The run being reviewed: its gallery, the model (loaded once) and the photo being edited.

    Every method that touches the model or the files holds one lock: requests are served one at
    a time, in the order they come. Create it while holding the run's lock.
    """

    def __init__(self, out_dir: Path, config: PipelineConfig, source_dir: Path | None = None, workers: int = 2):
        self.out_dir = Path(out_dir).resolve()
        self.config = config
        if not has_manifest(self.out_dir):
            raise NoManifestError(f"{display(self.out_dir)}: no finished run here (no {manifest_path(self.out_dir).name})")
        self.manifest = Manifest(self.out_dir)  # every manifest's records, shards' too (accepts: :meth:`_manifest_for`)
        self.shards = sharded_job(self.out_dir)
        self._shard_manifests: dict[str, Manifest] = {}
        self.site: Site = collect_site(self.out_dir, source_dir, workers, config.input.hints_dir)
        self.by_key = {files.key: i for i, files in enumerate(self.site.files)}
        weights = config.model.weights
        if not weights.is_file():
            raise ReviewError(f"{display(weights)}: weights file not found (set model.weights or --weights)")
        sha = file_sha256(weights)
        try:
            device = resolve_device(config.model.device)
            generator, info = load_weights(weights, device, sha)
        except (WeightsError, InferenceError) as exc:
            raise ReviewError(str(exc)) from None
        self.ident = RunIdentity(sha, config.pixel_hash(), automatic_sha256=info.automatic_sha256)
        problem = check_size(config.model.size, info, "model.size")
        if problem:
            raise ReviewError(problem)
        self.model_id = info.model_id
        self.colorizer = Colorizer.for_model(generator, device, config.model)
        self._lock = threading.Lock()
        self._editing: Editing | None = None

    def settings_mismatch(self) -> str | None:
        """Why accepted photos would not stay up to date: the run used other weights or settings."""
        records = [self.manifest.known.get(files.key) for files in self.site.files]
        differ = sum(1 for rec in records  # a record without an automatic model's hash is a photo with hints
                     if rec is None or rec.config != self.ident.config_hash or not self.ident.made_by(rec, rec.automatic is None))
        if not differ:
            return None
        return (f"{differ} of {len(records)} photo(s) were made with other weights or settings than this review's "
                "(give review the run's --config, --weights, --size, --format and --temperature): "
                "a photo accepted here would be redone by the next run")

    def close(self) -> None:
        for manifest in (self.manifest, *self._shard_manifests.values()):
            manifest.close()

    def _manifest_for(self, files: ItemFiles) -> Manifest:
        """Where an accepted photo is recorded: the manifest its run reads it from, the shard's own
        for an OUT made by ``--shard`` runs (a shard's records override the others' for that shard)."""
        if self.shards is None:
            return self.manifest
        tag = shard_tag(shard_of(str(files.source_rel), self.shards), self.shards)  # as planning's Shard.owns
        if tag not in self._shard_manifests:
            self._shard_manifests[tag] = Manifest(self.out_dir, tag)
        return self._shard_manifests[tag]

    # -- lookups: a photo is named by its manifest key, never by a path

    def _index(self, key: object) -> int:
        index = self.by_key.get(key) if isinstance(key, str) else None
        if index is None:
            raise NotFound("no such photo in this run")
        if self.site.items[index].hint is None or self.site.files[index].source is None:
            raise NotFound("this photo cannot be edited here (not colorized by the run, or its source is unknown)")
        return index

    def _hints(self, index: int, points: object) -> tuple[Hints, dict]:
        """The request's points (checked as a hint file is), with the existing file's global tint kept."""
        document: dict = {"points": points}
        existing = self.site.items[index].hint
        if existing is not None and existing.document and existing.document.get("global"):
            document["global"] = existing.document["global"]
        try:
            return parse_hints(document), document
        except HintError as exc:
            raise BadRequest(str(exc)) from None

    def _photo(self, index: int) -> Editing:
        files = self.site.files[index]
        if self._editing is None or self._editing.key != files.key:
            assert files.source is not None
            item = DecodeDataset([files.source], self.config.model.size, self.config.input.max_pixels, [files.page])[0]
            if item.error:
                raise BadRequest(f"{display(files.source_rel.as_posix())}: {item.error}")
            self._editing = Editing(files.key, item, display_grey(item))
        return self._editing

    def hint_file(self, index: int) -> Path:
        """Where a run looks for the photo's hints: under ``--hints DIR``, else beside the scan."""
        files = self.site.files[index]
        root = self.site.hints_root or self.site.src_root
        assert root is not None  # editable photos have a known source folder
        return hints_path_for(files.source_rel, root)

    def _job(self, index: int) -> Job:
        """The photo's job as :func:`~colorize_batch.planning.plan_run` makes it (same fingerprint, hints, key)."""
        files = self.site.files[index]
        assert files.source is not None
        record = self.manifest.known.get(files.key)
        checksum = record is not None and (record.source_fp or "").startswith("sha256=")  # the run fingerprinted by content
        item = WorkItem(files.source, files.source_rel)
        try:
            hints, fp = with_hints(item, fingerprint(files.source, checksum), self.site.hints_root,
                                   self.config.model.hint_edges)
        except (OSError, HintError) as exc:
            raise BadRequest(f"{display(files.source_rel.as_posix())}: {getattr(exc, 'strerror', None) or exc}") from None
        pages = tiff_page_count(files.source) if files.key != files.source_rel.as_posix() else 1
        return Job(item, files.output, fp, files.page, pages, hints)

    # -- what the page asks for

    def preview(self, key: object, points: object) -> bytes:
        """The photo re-colorized with these points, as a display-size JPEG."""
        with self._lock:
            index = self._index(key)
            hints, _ = self._hints(index, points)
            photo = self._photo(index)
            _, cb, cr, _ = predict_planes(self.colorizer, [photo.item], self.config, [hints])
            planes = ycbcr_planes(photo.display, cb[0], cr[0])
        return jpeg_from_planes(planes, PREVIEW_QUALITY)

    def suggest(self, key: object, points: object, x: object, y: object) -> list[dict]:
        """The model's most likely distinct colours at ``(x, y)`` (0-1 of the upright photo), given the other points."""
        px, py = _unit(x, "x"), _unit(y, "y")
        with self._lock:
            index = self._index(key)
            hints, _ = self._hints(index, points)
            photo = self._photo(index)
            squares = network_squares([photo.item])
            planes = network_hints(self.colorizer, [photo.item], [hints], squares.shape[-1])
            belief = self.colorizer.bin_probabilities(squares, planes)
            ab = self.colorizer.predict(squares, hints=planes) if belief is None else None
        height, width = photo.display.shape
        grey = photo.display[min(int(py * height), height - 1), min(int(px * width), width - 1)]
        lightness = float(grey_to_lightness(torch.tensor(int(grey))))
        if belief is None:  # a generator without bins (pix2pix family): its one prediction there
            assert ab is not None
            side = ab.shape[-1]
            a, b = ab[0, :, min(int(py * side), side - 1), min(int(px * side), side - 1)].tolist()
            return [{"color": swatch_hex(lightness, a, b), "share": 1.0}]
        probs, bins = belief
        rows, cols = probs.shape[-2:]
        r, c = min(int(py * rows), rows - 1), min(int(px * cols), cols - 1)
        around = probs[0, :, max(r - 1, 0): r + 2, max(c - 1, 0): c + 2].mean(dim=(1, 2))  # the cell and its neighbours
        grid = float(getattr(self.colorizer.generator.config, "ab_grid", 10.0))
        return distinct_colours(around, bins, lightness, grid=grid)

    def accept(self, key: object, points: object) -> dict:
        """Write the photo's hint file and its output (atomically, as ``run`` does) and record it."""
        with self._lock:
            index = self._index(key)
            hints, document = self._hints(index, points)
            files = self.site.files[index]
            assert files.source is not None
            problem = target_problem(files.output, files.source, self.out_dir, True, False)
            if problem:
                raise BadRequest(problem)
            if not files.source.is_file():  # moved or deleted since the review started: nothing is written
                raise BadRequest(f"{display(files.source_rel.as_posix())}: the scan is no longer at "
                                 f"{display(files.source)} (moved or deleted); nothing written")
            photo = self._photo(index)  # a scan that cannot be decoded writes nothing either
            path = self.hint_file(index)
            root = self.site.hints_root  # hints import's rules: never through a link out of --hints DIR, never over a link
            if root is not None and leads_outside(path.parent, root):
                raise BadRequest(f"{display(path.parent)} leads outside {display(root)} (symlink); nothing written")
            if path.is_symlink():
                raise BadRequest(f"{display(path)} is a symlink; not replaced, nothing written")
            try:
                atomic_write_text(path, json.dumps(document, indent=1) + "\n")
            except OSError as exc:
                raise BadRequest(f"{display(path)}: cannot write the hint file ({exc.strerror or exc})") from None
            job = self._job(index)  # reads the file back as a run does: fingerprint and hints
            ab, cb, cr, _ = predict_planes(self.colorizer, [photo.item], self.config, [job.hints])
            result = render_result(photo.item, ab[0], (cb[0], cr[0]), job, self.config, self.model_id)
            ResultSink(RunStats(), self._manifest_for(files), self.ident, self.out_dir).add(result)
            if result.status is not Status.DONE:
                raise BadRequest(f"{display(files.source_rel.as_posix())}: {result.reason}")
            self.site.refresh(index)
            log.info("review: accepted %s (%d hint point(s)): %s", display(files.key), len(hints.points), display(job.output))
        shown = self.site.items[index].hint
        return {"hints": display(path), "output": display(job.output), "points": len(hints.points),
                "existing": shown.document if shown is not None else None}

    def file(self, index: int, side: str, thumb: bool) -> Path:
        """A file the page shows, by the item's position: its thumbnail or full-resolution file."""
        if not 0 <= index < len(self.site.files) or side not in ("out", "src"):
            raise NotFound("no such file")
        files = self.site.files[index]
        path = (files.thumb_out if side == "out" else files.thumb_src) if thumb else (files.output if side == "out" else files.source)
        if path is None or not path.is_file():
            raise NotFound("no such file")
        return path


# --------------------------------------------------------------------------- HTTP


class TokenGate:
    """Refuses (403) every request without the server's token (``?token=`` or the cookie), and adds
    headers that keep the token in this tab (no referrer) and the answers out of caches."""

    def __init__(self, app: ASGIApp, token: str):
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        if not secrets.compare_digest(given.encode(), self.token.encode()):
            await PlainTextResponse("403: the review token is missing or wrong: open the address review printed",
                                    status_code=403)(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Cache-Control"] = "no-store"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _json_body(request: Request) -> dict:
    """The request's JSON object, at most :data:`MAX_BODY_BYTES`."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _TooLarge()
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_BODY_BYTES:
            raise _TooLarge()
    try:
        data = json.loads(bytes(body).decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise BadRequest("the request is not JSON") from None
    except RecursionError:  # [[[[...: nested deeper than the parser goes
        raise BadRequest("the request is nested too deeply") from None
    if not isinstance(data, dict):
        raise BadRequest("the request must be a JSON object")
    return data


class _TooLarge(Exception):
    pass


def _error(exc: Exception) -> Response:
    if isinstance(exc, NotFound):
        return JSONResponse({"error": str(exc)}, status_code=404)
    if isinstance(exc, _TooLarge):
        return JSONResponse({"error": f"request larger than {MAX_BODY_BYTES} bytes"}, status_code=413)
    return JSONResponse({"error": str(exc)}, status_code=400)


def create_app(reviewer: Reviewer, token: str, page_size: int = 100) -> Starlette:
    """The review site: gallery pages, their pictures, and the editor's three calls."""

    async def page(request: Request) -> Response:
        number = int(request.path_params.get("number", 1))
        if not 1 <= number <= reviewer.site.pages(page_size):
            return PlainTextResponse("404: no such page", status_code=404)
        html = await run_in_threadpool(render_page, reviewer.site, number, page_size, True)
        response = HTMLResponse(html)
        response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict", path="/")
        return response

    def picture(thumb: bool):
        async def serve_file(request: Request) -> Response:
            try:
                path = reviewer.file(int(request.path_params["index"]), request.path_params["side"], thumb)
            except NotFound as exc:
                return PlainTextResponse(f"404: {exc}", status_code=404)
            return FileResponse(path, media_type="image/jpeg" if thumb else None)
        return serve_file

    async def recolor(request: Request) -> Response:
        try:
            data = await _json_body(request)
            start = time.perf_counter()
            jpeg = await run_in_threadpool(reviewer.preview, data.get("key"), data.get("points", []))
        except (NotFound, BadRequest, _TooLarge) as exc:
            return _error(exc)
        return Response(jpeg, media_type="image/jpeg",
                        headers={"Server-Timing": f"recolor;dur={(time.perf_counter() - start) * 1000:.0f}"})

    async def suggest(request: Request) -> Response:
        try:
            data = await _json_body(request)
            colours = await run_in_threadpool(reviewer.suggest, data.get("key"), data.get("points", []), data.get("x"), data.get("y"))
        except (NotFound, BadRequest, _TooLarge) as exc:
            return _error(exc)
        return JSONResponse({"colors": colours})

    async def accept(request: Request) -> Response:
        try:
            data = await _json_body(request)
            done = await run_in_threadpool(reviewer.accept, data.get("key"), data.get("points", []))
        except (NotFound, BadRequest, _TooLarge) as exc:
            return _error(exc)
        return JSONResponse(done)

    routes = [
        Route("/", page),
        Route("/index.html", page),
        Route("/page-{number:int}.html", page),
        Route("/thumb/{index:int}/{side}", picture(thumb=True)),
        Route("/full/{index:int}/{side}", picture(thumb=False)),
        Route("/api/recolor", recolor, methods=["POST"]),
        Route("/api/suggest", suggest, methods=["POST"]),
        Route("/api/accept", accept, methods=["POST"]),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=[HOST, "localhost"]), Middleware(TokenGate, token=token)]
    return Starlette(routes=routes, middleware=middleware)


def listen(port: int) -> socket.socket:
    """A socket listening on 127.0.0.1 (``port`` 0: any free port)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind((HOST, port))
        sock.listen(64)
    except OSError as exc:
        sock.close()
        raise ReviewError(f"cannot listen on {HOST}:{port} ({exc.strerror or exc})") from None
    return sock


def serve(reviewer: Reviewer, sock: socket.socket, page_size: int = 100) -> int:
    """Print the address (one line on stdout) and serve on ``sock`` until SIGINT/SIGTERM; the exit code."""
    import uvicorn

    token = secrets.token_urlsafe(24)
    app = create_app(reviewer, token, page_size)
    click.echo(f"http://{HOST}:{sock.getsockname()[1]}/?token={token}")
    sys.stdout.flush()
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                           timeout_graceful_shutdown=5))
    with StopFlag("the review server stopped") as stop:  # uvicorn hands on the signal that stopped it
        try:
            server.run(sockets=[sock])
        except KeyboardInterrupt:
            return ExitCode.INTERRUPTED
    return ExitCode.INTERRUPTED if stop else ExitCode.OK


def run_review(out_dir: Path, config: PipelineConfig, port: int = 0, source_dir: Path | None = None,
               page_size: int = 100, workers: int = 2) -> int:
    """``colorize-batch review``: lock OUT, load, serve; every foreseeable problem is one line and an exit code."""
    out_dir = Path(out_dir)
    try:
        if not has_manifest(out_dir):  # before the lock, which would make OUT/.colorize-batch/; shards' manifests count
            click.echo(f"Error: {display(out_dir)}: no finished run here (no .colorize-batch/manifest.jsonl)", err=True)
            return ExitCode.USAGE
        with RunLock(out_dir), listen(port) as sock:  # a taken port is found before the model loads
            reviewer = Reviewer(out_dir, config, source_dir, workers)
            try:
                problem = reviewer.settings_mismatch()
                if problem:
                    log.warning("review: %s", problem)
                return serve(reviewer, sock, page_size)
            finally:
                reviewer.close()
    except LockedError as exc:
        click.echo(f"Error: {exc}", err=True)
        return ExitCode.LOCKED
    except (ReviewError, NoManifestError, StateLinkError) as exc:  # a link in OUT's state: refused, as run refuses it
        click.echo(f"Error: {exc}", err=True)
        return ExitCode.USAGE
    except StateError as exc:
        click.echo(f"Error: {exc}", err=True)
        return ExitCode.FAILED
    except KeyboardInterrupt:
        return ExitCode.INTERRUPTED
