"""The live app in a real browser: a fake camera file, headless Chromium, the server on a port.

Shared by tests/test_serve_browser.py and benchmarks/live.py. Chromium reads the camera from a
.y4m file (YUV4MPEG2: a text header, then per frame `FRAME` and the I420 planes), looped; the
clip is a sample photo with its head moving (`data.samples.head_motion_frames`), square around
the face.
"""
from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
INSTALL = "apt-get install chromium chromium-driver"


def missing_browser() -> str | None:
    """Why the browser tests cannot run here, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists():
            return f"{path} is missing: install Debian's Chromium with `{INSTALL}` (make test does, as root)"
    return None


def write_y4m(path: Path, frames: np.ndarray, fps: int) -> Path:
    """frames (T, H, W, 3) uint8 RGB (H, W even) -> a YUV4MPEG2 file, 4:2:0."""
    _, h, w, _ = frames.shape
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for rgb in frames:
            f.write(b"FRAME\n")
            f.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2YUV_I420).tobytes())  # Y (H, W), U, V (H/2, W/2)
    return path


def camera_clip(path: Path, seconds: float = 3.0, fps: int = 25, size: int = 256, photo: str = "grace_hopper") -> Path:
    """A size x size .y4m of `photo`'s head moving, the face in the middle (a webcam's framing)."""
    from bilayer.data.samples import SAMPLE_PHOTOS, head_motion_frames

    frames = head_motion_frames(photo, round(seconds * fps), fps)  # (T, H, W, 3)
    cx, cy, face = SAMPLE_PHOTOS[photo].face
    h, w = frames.shape[1:3]
    side = min(round(2.3 * face), h, w)
    x0, y0 = (int(np.clip(round(c - side / 2), 0, n - side)) for c, n in ((cx, w), (cy, h)))
    square = frames[:, y0:y0 + side, x0:x0 + side]
    return write_y4m(path, np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in square]), fps)


def chromium(camera: Path, profile: Path):
    """Headless Chromium (selenium) whose camera plays `camera` (.y4m), with a fresh profile."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-video-capture={camera}", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run", f"--user-data-dir={profile}",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))


@contextlib.contextmanager
def serving(app) -> Iterator[str]:
    """Run `app` with uvicorn on a free port of 127.0.0.1 in a background thread; yields its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
