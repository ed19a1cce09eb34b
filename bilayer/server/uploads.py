"""Uploads: multipart files streamed to disk under a size limit and checked before any long work.

Problems of a file are one-line `InputError`s (the app answers `{"error": message}`): sizes over
the limits `TooLarge` (413), the rest the package's own messages, the CLI's, naming the file as
uploaded (the server's folders are cut out by `public_message`); a request without the file is a
400 `HTTPException`.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import BinaryIO

from fastapi import HTTPException, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.types import Message, Receive

from bilayer.errors import InputError
from bilayer.io.files import format_size

FORM_OVERHEAD = 64 * 1024  # multipart boundaries and part headers around the file
MAX_NAME = 100


def safe_name(filename: str | None, default: str) -> str:
    """The upload's base name reduced to letters, digits, '.', '-' and '_' (its suffix kept, for
    the media reader), or `default` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(filename or "").name).lstrip(".")
    return name[-MAX_NAME:] or default


class TooLarge(InputError):
    """An upload, image or video frame over the server's limits (HTTP 413)."""


def too_large(name: str, size: int | None, limit: int) -> TooLarge:
    what = f"{format_size(size)}, more" if size is not None else "more"
    return TooLarge(f"{name}: {what} than the server's limit of {format_size(limit)}")


def limited(receive: Receive, limit: int, name: str) -> Receive:
    """`receive` that fails with a 413 once the request body passes `limit` bytes (clients that
    send no Content-Length, or a wrong one)."""
    seen = 0

    async def wrapped() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise too_large(name, None, limit)
        return message

    return wrapped


async def receive_file(request: Request, field: str, limit: int, folder: Path, default: str) -> Path:
    """Stream the multipart file `field` of `request` (at most `limit` bytes) to `folder`; returns
    its path (named after the upload, `default` when it has no usable name)."""
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > limit + FORM_OVERHEAD:
        raise too_large(field, int(length), limit)
    body = Request(request.scope, limited(request.receive, limit + FORM_OVERHEAD, field))
    async with body.form(max_files=1, max_fields=16) as form:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise HTTPException(400, f"no file in the multipart field {field!r}")
        name = safe_name(upload.filename, default)
        if upload.size is not None and upload.size > limit:
            raise too_large(name, upload.size, limit)
        path = folder / name
        await run_in_threadpool(_copy, upload, path)
    return path


def _copy(upload: UploadFile, path: Path) -> None:
    with open(path, "wb") as out:
        shutil.copyfileobj(upload.file, out)


def declared_size(source: Path | BinaryIO) -> tuple[int, int] | None:
    """(width, height) from an image's header without decoding it; None where PIL cannot tell."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(source) as image:
            return image.size
    except Image.DecompressionBombError:  # PIL's own limit, far above ours
        return (Image.MAX_IMAGE_PIXELS, Image.MAX_IMAGE_PIXELS)
    except (UnidentifiedImageError, OSError):
        return None


def check_pixels(name: str, size: tuple[int, int] | None, max_pixels: int) -> None:
    """A 413 for an image or video frame of more than `max_pixels` (a small file can decode to
    gigabytes); an unknown size is left to the decoder, which names the problem."""
    if size is not None and size[0] * size[1] > max_pixels:
        raise TooLarge(f"{name}: {size[0]} x {size[1]} pixels, more than the server's limit of {max_pixels:,}")


def check_video(path: Path, max_pixels: int) -> None:
    """A driving video: one decodable frame, at most `max_pixels` per frame (the media reader's
    one-line errors otherwise)."""
    from bilayer.io.media import MediaReader

    with MediaReader(path, max_frames=1) as reader:
        if reader.info.kind != "video":
            raise InputError(f"{path}: the driver must be a video")
        check_pixels(path.name, (reader.info.width, reader.info.height), max_pixels)
        next(reader.frames())


def public_message(error: BaseException, root: Path) -> str:
    """The error's first line with the server's folders under `root` cut out of the paths it names."""
    text = (str(error).strip() or type(error).__name__).splitlines()[0]
    return re.sub(re.escape(str(root)) + r"/(?:[^/\s]+/)*", "", text)
