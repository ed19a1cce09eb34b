"""The FastAPI app of `bilayer serve`: the page (`static/`), the HTTP API and the live WebSocket
(docs/serve.md).

    POST /api/avatars                  multipart `photo` -> avatar {"id", "size", "crop", "bytes", "precision", ...}
    DELETE /api/avatars/{id}
    WS   /api/avatars/{id}/drive       binary JPEG camera frames in, binary JPEG renders out
    POST /api/avatars/{id}/animate     multipart `video` -> the mp4 (waits for it)
    POST /api/avatars/{id}/jobs        multipart `video` -> a job {"id", "state", ...} (202)
    GET  /api/jobs/{id}                the job's state; GET /api/jobs/{id}/video: its mp4
    GET  /api/stats                    avatars, jobs, streams, per-stage times of live frames

CPU work (avatar creation, video jobs; live frames on a pool of their own, so that long work never
stalls the streams) runs on thread pools, never on the event loop.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Mapping

import cv2
from fastapi import FastAPI, HTTPException, Request, WebSocket, WebSocketDisconnect
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException as StarletteHTTPException

from bilayer.checkpoint import load_model, resolve_checkpoint
from bilayer.errors import InputError
from bilayer.io.files import DiskFull
from bilayer.runtime.avatar import Avatar
from bilayer.runtime.pipeline import AnimateOptions, animate
from bilayer.server.auth import TokenCheck, deny
from bilayer.server.avatars import AvatarCache, AvatarEntry, CacheFull, memory_bytes, new_id
from bilayer.server.config import ServeConfig
from bilayer.server.jobs import Job, JobStore, StoreFull
from bilayer.server.live import AnnotatorPool, LiveSession, Mailbox, StageTimes
from bilayer.server.uploads import TooLarge, check_pixels, check_video, declared_size, public_message, receive_file

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
#: Query options of the live stream and of video jobs, with their defaults (`token` is the auth's).
OPTIONS = {"background": "black", "side_by_side": "0", "paste_back": "0", "relative": "1"}
FLAGS = {"1": True, "true": True, "yes": True, "on": True, "0": False, "false": False, "no": False, "off": False}


def render_options(query: Mapping[str, str], config: ServeConfig) -> AnimateOptions:
    """The query's options (see OPTIONS) as the runtime's `AnimateOptions`; unknown ones refused."""
    unknown = sorted(set(query) - set(OPTIONS) - {"token"})
    if unknown:
        raise InputError(f"unknown option {unknown[0]!r} (expected one of {', '.join(OPTIONS)})")
    values = {**OPTIONS, **{k: v for k, v in query.items() if k in OPTIONS}}
    flags = {}
    for name in ("side_by_side", "paste_back", "relative"):
        if values[name].lower() not in FLAGS:
            raise InputError(f"{name} must be 0 or 1, got {values[name]!r}")
        flags[name] = FLAGS[values[name].lower()]
    return AnimateOptions(backend=config.backend, precision=config.precision, background=values["background"], **flags)


class Server:
    """The app's state: settings, a private work folder, the thread pools, avatars, jobs and the
    live streams with their stage times."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.checkpoint = resolve_checkpoint(config.checkpoint)
        self.model, _ = load_model(self.checkpoint)  # one model for every avatar and video job
        self.model_config = self.model.cfg
        self.model_bytes = memory_bytes(self.model)
        self.root = Path(tempfile.mkdtemp(prefix="bilayer-serve-"))
        self.live_pool = ThreadPoolExecutor(config.workers, thread_name_prefix="bilayer-live")
        self.work_pool = ThreadPoolExecutor(max(2, config.workers // 2), thread_name_prefix="bilayer-work")
        self.avatars = AvatarCache(config.max_avatars, config.max_avatar_bytes)
        self.jobs = JobStore(config.max_jobs, self.work_pool, self.root / "jobs")
        self.annotators = AnnotatorPool(self.model_config.image_size, self.model_config.preprocessing)
        self.times = StageTimes()
        self.streams: dict[Mailbox, LiveSession | None] = {}  # camera streams (None: starting)

    def make_avatar(self, avatar_id: str, photo: Path, folder: Path) -> AvatarEntry:
        """The avatar of a photo and its cache entry (its tensors counted): CPU work for the pool."""
        avatar = Avatar.from_image(photo, self.model, self.config.backend, self.config.precision)
        return AvatarEntry(avatar_id, avatar, photo, folder)

    async def work(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) on the pool for long work (avatars, video checks)."""
        return await asyncio.get_running_loop().run_in_executor(self.work_pool, partial(fn, *args))

    async def live(self, fn: Callable, *args: Any) -> Any:
        """fn(*args) on the pool for live frames."""
        return await asyncio.get_running_loop().run_in_executor(self.live_pool, partial(fn, *args))

    def avatar(self, avatar_id: str) -> AvatarEntry:
        entry = self.avatars.get(avatar_id)
        if entry is None:
            raise HTTPException(404, f"no avatar {avatar_id!r} (unknown, deleted or evicted: upload the photo again)")
        return entry

    def job(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown or removed)")
        return job

    def stats(self) -> dict:
        cfg = self.model_config
        return {
            "model": {"checkpoint": self.checkpoint.name, "image_size": cfg.image_size,
                      "backend": self.config.backend, "precision": self.config.precision,
                      "bytes": self.model_bytes},
            "avatars": {"count": len(self.avatars), "bytes": self.avatars.nbytes,
                        "max_count": self.config.max_avatars, "max_bytes": self.config.max_avatar_bytes},
            "jobs": len(self.jobs),
            "streams": [{"dropped": mailbox.dropped, **session.times.summary()}
                        for mailbox, session in self.streams.items() if session is not None],
            "idle_annotators": len(self.annotators),
            "live": self.times.summary(),
        }

    def close(self) -> None:
        self.live_pool.shutdown(wait=False, cancel_futures=True)
        self.work_pool.shutdown(wait=False, cancel_futures=True)
        self.avatars.clear()
        self.jobs.clear()
        shutil.rmtree(self.root, ignore_errors=True)


def error_handlers(app: FastAPI, root: Path) -> None:
    """Every error as `{"error": one line}`: bad input 422 (too large 413), HTTP errors their own
    status, full job store 429, a full avatar cache or disk 507, anything else 500 (logged, no
    traceback to the client); paths inside the server's folder are cut out."""

    def answer(status: int) -> Callable:
        async def handler(request: Request, e: Exception) -> JSONResponse:
            return JSONResponse({"error": public_message(e, root)}, status)
        return handler

    async def http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"error": str(e.detail)}, e.status_code, headers=e.headers)

    async def internal_error(request: Request, e: Exception) -> JSONResponse:
        return JSONResponse({"error": f"internal error ({type(e).__name__}); see the server's log"}, 500)

    async def validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
        first = e.errors()[0]
        return JSONResponse({"error": f"{'.'.join(map(str, first['loc']))}: {first['msg']}"}, 422)

    app.add_exception_handler(TooLarge, answer(413))
    app.add_exception_handler(InputError, answer(422))
    app.add_exception_handler(StoreFull, answer(429))
    app.add_exception_handler(CacheFull, answer(507))
    app.add_exception_handler(DiskFull, answer(507))
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


def create_app(config: ServeConfig) -> FastAPI:
    """The app (the server's work folder and pools live as long as its lifespan)."""
    server = Server(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.close()

    # No /docs: Swagger UI loads from a CDN, and the page must work offline (docs/serve.md instead).
    app = FastAPI(title="bilayer live", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server
    app.add_middleware(TokenCheck, token=config.token)
    error_handlers(app, server.root)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.post("/api/avatars", status_code=201)
    async def create_avatar(request: Request) -> dict:
        avatar_id = new_id()
        folder = server.root / "avatars" / avatar_id
        folder.mkdir(parents=True)
        try:
            photo = await receive_file(request, "photo", config.max_photo_bytes, folder, "photo.jpg")
            check_pixels(photo.name, declared_size(photo), config.max_pixels)
            entry = await server.work(server.make_avatar, avatar_id, photo, folder)
            server.avatars.add(entry)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        _, png = cv2.imencode(".png", entry.avatar.source_face.image[..., ::-1])
        return {"id": avatar_id, "size": entry.avatar.model.cfg.image_size, "bytes": entry.nbytes,
                "precision": entry.avatar.precision, "precision_note": entry.avatar.precision_note,
                "init_ms": entry.avatar.init_stages_ms, "crop": "data:image/png;base64," + base64.b64encode(png.tobytes()).decode()}

    @app.delete("/api/avatars/{avatar_id}", status_code=204)
    async def delete_avatar(avatar_id: str) -> Response:
        server.avatars.remove(server.avatar(avatar_id).id)
        return Response(status_code=204)

    @app.websocket("/api/avatars/{avatar_id}/drive")
    async def drive(ws: WebSocket, avatar_id: str) -> None:
        entry = server.avatars.get(avatar_id)
        if entry is None:
            return await deny(ws.scope, ws.receive, ws.send, 404,
                              f"no avatar {avatar_id!r} (unknown, deleted or evicted)")
        if len(server.streams) >= config.max_streams:  # counted from here to the stream's end
            return await deny(ws.scope, ws.receive, ws.send, 503,
                              f"too many camera streams: the server drives at most {config.max_streams} at once")
        try:
            options = render_options(ws.query_params, config)
        except InputError as e:
            return await deny(ws.scope, ws.receive, ws.send, 422, str(e))
        await stream(ws, server, entry, options)

    @app.post("/api/avatars/{avatar_id}/jobs", status_code=202)
    async def create_job(avatar_id: str, request: Request) -> dict:
        return (await start_job(request, server, avatar_id)).status()

    @app.post("/api/avatars/{avatar_id}/animate")
    async def animate_video(avatar_id: str, request: Request) -> FileResponse:
        job = await start_job(request, server, avatar_id)
        await job.future
        try:
            return job_video(server, job, attachment=False, background=BackgroundTask(server.jobs.remove, job.id))
        except Exception:
            server.jobs.remove(job.id)
            raise

    @app.get("/api/jobs/{job_id}")
    async def job_status(job_id: str) -> dict:
        return server.job(job_id).status()

    @app.get("/api/jobs/{job_id}/video")
    async def job_result(job_id: str, download: bool = False) -> FileResponse:
        return job_video(server, server.job(job_id), attachment=download)

    @app.get("/api/stats")
    async def stats() -> dict:
        return server.stats()

    return app


async def start_job(request: Request, server: Server, avatar_id: str) -> Job:
    """Receive the driving video of a request, check it and queue `animate` with the avatar's photo."""
    config = server.config
    entry = server.avatar(avatar_id)
    options = render_options(request.query_params, config)
    job = server.jobs.create()
    try:
        photo = job.folder / f"source{entry.photo.suffix}"  # copied now: the avatar may be evicted meanwhile
        shutil.copyfile(entry.photo, photo)
        video = await receive_file(request, "video", config.max_video_bytes, job.folder, "video.mp4")
        await server.work(check_video, video, config.max_pixels)
    except BaseException:
        server.jobs.remove(job.id)
        raise
    out = job.folder / f"{video.stem}-bilayer.mp4"
    render = partial(animate, photo, out, server.model, driver=video, options=options, progress=False,
                     on_frame=job.progress)
    server.jobs.start(job, render)
    return job


def job_video(server: Server, job: Job, attachment: bool, background: BackgroundTask | None = None) -> FileResponse:
    """The mp4 of a finished job; a failed job's error (422, or 500 when the server failed), an
    unfinished one 409."""
    if job.state == "failed":
        raise HTTPException(job.error_status, job.error)
    if job.state != "done":
        raise HTTPException(409, f"job {job.id!r} is {job.state}, not done yet")
    path = job.result.path
    return FileResponse(path, media_type="video/mp4", filename=path.name if attachment else None,
                        content_disposition_type="attachment" if attachment else "inline", background=background)


async def stream(ws: WebSocket, server: Server, entry: AvatarEntry, options: AnimateOptions) -> None:
    """Accept the WebSocket and drive `entry` from its frames until the client leaves: one frame
    processed at a time, the newest waiting one next (stale ones dropped); problems with a frame
    are answered as text `{"error": ...}` and the stream goes on."""
    mailbox = Mailbox()
    server.streams[mailbox] = None
    receiver = face = None
    try:
        await ws.accept()
        receiver = asyncio.create_task(receive_frames(ws, mailbox, time.monotonic()))
        face = await server.live(server.annotators.take)
        server.streams[mailbox] = await server.live(LiveSession, entry, options, face, server.config.max_pixels,
                                                    server.times)
        session = server.streams[mailbox]
        while (item := await mailbox.get()) is not None:
            try:
                reply = await server.live(session.process, *item)
            except InputError as e:
                await ws.send_text(json.dumps({"error": public_message(e, server.root)}))
                continue
            await ws.send_bytes(reply)
    except WebSocketDisconnect:
        pass
    except Exception:
        log.exception("live stream failed")
        with contextlib.suppress(RuntimeError, WebSocketDisconnect):  # the client may be gone already
            await ws.close(1011, "internal error; see the server's log")
    finally:
        if receiver is not None:
            receiver.cancel()
        del server.streams[mailbox]
        if face is not None:
            server.annotators.give(face)


async def receive_frames(ws: WebSocket, mailbox: Mailbox, start: float) -> None:
    """Put each received frame (bytes, seconds since `start`) into `mailbox`; close it when the
    client leaves."""
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            mailbox.put((message.get("bytes") or b"", time.monotonic() - start))
    finally:
        mailbox.close()
