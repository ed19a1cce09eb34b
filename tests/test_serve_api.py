"""`bilayer serve`'s HTTP API and live WebSocket (FastAPI's TestClient), with a tiny random model
and real photos and videos: avatars, live frames, video jobs, bad input, tokens, vanishing and
concurrent clients, the avatar cache's limits, the CLI.

The tiny random model's renders hardly depend on the keypoints (a change of 0.05 moves its pixels
by 0.01 levels), so that the render follows the driver is checked with the shipped demo model.
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402
from starlette.testclient import WebSocketDenialResponse  # noqa: E402

from bilayer.cli.main import main  # noqa: E402
from bilayer.data.samples import SAMPLE_PHOTOS  # noqa: E402
from bilayer.errors import InputError  # noqa: E402
from bilayer.io.images import to_uint8  # noqa: E402
from bilayer.io.media import MediaReader  # noqa: E402
from bilayer.nets import apply_mask  # noqa: E402
from bilayer.runtime.avatar import Avatar  # noqa: E402
from bilayer.server.app import create_app  # noqa: E402
from bilayer.server.avatars import AvatarCache, AvatarEntry, CacheFull, memory_bytes  # noqa: E402
from bilayer.server.config import MB, ServeConfig, is_loopback, resolve_token  # noqa: E402
from bilayer.server.live import encode_jpeg  # noqa: E402

TOKEN = "s3cret-token"
LIMITS = dict(max_photo_bytes=2 * MB, max_video_bytes=2 * MB, max_pixels=4_000_000)


@pytest.fixture(scope="module")
def client(tiny_checkpoint):
    with TestClient(create_app(ServeConfig(tiny_checkpoint, **LIMITS))) as c:
        yield c


@pytest.fixture(scope="module")
def portrait(media_dir) -> Path:
    return media_dir / "bob" / "portrait.png"


@pytest.fixture(scope="module")
def avatar_id(client, portrait) -> str:
    return upload_photo(client, portrait).json()["id"]


@pytest.fixture(scope="module")
def camera(sample_video) -> list[bytes]:
    """JPEG frames of a real moving face: every 4th of the 2 s sample video (12 frames)."""
    with MediaReader(sample_video, frame_step=4, max_frames=12) as reader:
        return [jpeg(rgb) for _, _, rgb in reader.frames()]


def jpeg(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".jpg", rgb[..., ::-1])[1].tobytes()


def decode(data: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "not a JPEG"
    return image[..., ::-1]


def upload_photo(client, path: Path, name: str | None = None, **kwargs):
    return client.post("/api/avatars", files={"photo": (name or path.name, path.read_bytes(), "image/png")}, **kwargs)


def drive(client, avatar: str, frames: list[bytes], query: str = "") -> list[np.ndarray]:
    """Send each frame and wait for its answer (the page's one frame in flight)."""
    with client.websocket_connect(f"/api/avatars/{avatar}/drive{query}") as ws:
        out = []
        for frame in frames:
            ws.send_bytes(frame)
            out.append(decode(ws.receive_bytes()))
        return out


def refused(client, url: str, **kwargs) -> WebSocketDenialResponse:
    """The HTTP answer of a WebSocket the server refuses to open."""
    with pytest.raises(WebSocketDenialResponse) as e, client.websocket_connect(url, **kwargs):
        pass
    return e.value


def cli_message(tmp_path, monkeypatch, name: str, data: bytes, call) -> str:
    """The one-line error the package raises for a file `name` holding `data`, given by a relative
    path as on the command line."""
    monkeypatch.chdir(tmp_path)
    Path(name).write_bytes(data)
    with pytest.raises(InputError) as e:
        call(name)
    return str(e.value)


# ---- avatars and live frames ------------------------------------------------------------------------


def test_an_avatar_is_driven_live_by_a_face(client, avatar_id, camera):
    assert len(avatar_id) >= 20  # unguessable
    out = drive(client, avatar_id, camera)
    assert len(out) == len(camera) and all(o.shape == (64, 64, 3) for o in out)
    live = client.get("/api/stats").json()["live"]
    assert live["frames"] >= len(camera)
    assert set(live["stages"]) == {"decode", "keypoints", "render", "compose", "encode"}


def test_the_render_follows_the_driver(portrait, camera):
    """With a trained model: the answers change as the head moves, and the first (the driver's
    first face: relative motion starts at the source's pose) is the source pose's render."""
    from bilayer.assets import DEMO_CHECKPOINT

    with TestClient(create_app(ServeConfig(DEMO_CHECKPOINT))) as c:
        out = drive(c, upload_photo(c, portrait).json()["id"], camera)
    assert out[0].shape == (128, 128, 3)
    moved = [np.abs(o.astype(float) - out[0]).mean() for o in out[1:]]
    assert max(moved) > 5, moved
    avatar = Avatar.from_image(portrait, DEMO_CHECKPOINT)
    expected = to_uint8(apply_mask(*avatar.render(avatar.source_face.keypoints), -1.0))[0]
    assert np.abs(out[0].astype(float) - decode(encode_jpeg(expected))).mean() < 0.5


def test_the_crop_comes_back_with_the_avatar(client, portrait):
    import base64

    made = upload_photo(client, portrait)
    assert made.status_code == 201
    body = made.json()
    assert body["size"] == 64 and body["bytes"] > 0
    header, data = body["crop"].split(",", 1)
    assert header == "data:image/png;base64"
    crop = cv2.imdecode(np.frombuffer(base64.b64decode(data), np.uint8), cv2.IMREAD_COLOR)
    assert crop.shape == (64, 64, 3)


def test_live_options_change_the_frames(client, avatar_id, camera, portrait):
    black = drive(client, avatar_id, camera[:2], "?background=black")[-1]
    white = drive(client, avatar_id, camera[:2], "?background=white")[-1]
    assert white.mean() > black.mean() + 5  # the background behind the mask
    assert drive(client, avatar_id, camera[:1], "?side_by_side=1")[0].shape == (64, 192, 3)
    photo = cv2.imread(str(portrait))
    assert drive(client, avatar_id, camera[:1], "?paste_back=1")[0].shape == photo.shape  # the photo's size
    assert drive(client, avatar_id, camera[:1], "?paste_back=1&side_by_side=1")[0].shape == (64, 192, 3)


def test_a_bad_frame_is_answered_and_the_stream_goes_on(client, avatar_id, camera):
    with client.websocket_connect(f"/api/avatars/{avatar_id}/drive") as ws:
        ws.send_bytes(b"not a jpeg")
        assert ws.receive_json() == {"error": "frame 0: cannot decode image (corrupt or unknown format)"}
        ws.send_bytes(camera[0])
        assert decode(ws.receive_bytes()).shape == (64, 64, 3)


def test_stale_frames_are_dropped(client, avatar_id, camera):
    """A burst of frames: the server renders the newest waiting one, not each in turn."""
    burst = camera * 2
    with client.websocket_connect(f"/api/avatars/{avatar_id}/drive") as ws:
        for frame in burst:
            ws.send_bytes(frame)
        deadline = time.monotonic() + 30
        while True:  # until every frame is either rendered or dropped
            (stream,) = client.get("/api/stats").json()["streams"]
            if stream["frames"] + stream["dropped"] == len(burst) or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert stream["dropped"] > 0 and stream["frames"] + stream["dropped"] == len(burst)
        for _ in range(stream["frames"]):
            ws.receive_bytes()


@pytest.mark.parametrize("query, message", [
    ("?background=pink", "background must be one of black, white, none, got 'pink'"),
    ("?side_by_side=maybe", "side_by_side must be 0 or 1, got 'maybe'"),
    ("?colour=red", "unknown option 'colour' (expected one of background, side_by_side, paste_back, relative)"),
])
def test_bad_live_options_are_refused_before_the_stream_opens(client, avatar_id, query, message):
    denied = refused(client, f"/api/avatars/{avatar_id}/drive{query}")
    assert (denied.status_code, denied.json()) == (422, {"error": message})


# ---- bad input: the CLI's one-line messages ---------------------------------------------------------


def test_bad_photos_get_the_clis_one_line_message(client, tiny_checkpoint, tmp_path, monkeypatch):
    from_image = lambda p: Avatar.from_image(p, tiny_checkpoint)  # noqa: E731
    cat = SAMPLE_PHOTOS["chelsea"].path.read_bytes()
    for name, data in (("notes.txt", b"hello"), ("broken.png", b"\x89PNG not really"), ("cat.png", cat)):
        expected = cli_message(tmp_path, monkeypatch, name, data, from_image)
        r = client.post("/api/avatars", files={"photo": (name, data, "application/octet-stream")})
        assert (r.status_code, r.json()) == (422, {"error": expected})
    assert "no face found" in expected


def test_uploads_over_the_limits_are_refused(client, portrait, sample_video, avatar_id):
    big = b"\0" * (2 * MB + 1)
    r = client.post("/api/avatars", files={"photo": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "more than the server's limit of 2.0 MB" in r.json()["error"]
    r = client.post(f"/api/avatars/{avatar_id}/jobs", files={"video": ("big.mp4", big, "video/mp4")})
    assert r.status_code == 413
    huge = cv2.imencode(".png", np.zeros((2100, 2100, 3), np.uint8))[1].tobytes()  # small file, many pixels
    r = client.post("/api/avatars", files={"photo": ("huge.png", huge, "image/png")})
    assert (r.status_code, r.json()) == (
        413, {"error": "huge.png: 2100 x 2100 pixels, more than the server's limit of 4,000,000"})
    r = client.post("/api/avatars", files={"picture": ("p.png", portrait.read_bytes(), "image/png")})
    assert (r.status_code, r.json()) == (400, {"error": "no file in the multipart field 'photo'"})


def test_bad_videos_get_the_clis_one_line_message(client, avatar_id, portrait, tmp_path, monkeypatch):
    from bilayer.server.uploads import check_video

    for name, data in (("clip.mp4", b"\0\0\0 ftypisom garbage"), ("still.png", portrait.read_bytes())):
        expected = cli_message(tmp_path, monkeypatch, name, data, lambda p: check_video(Path(p), 10**9))
        r = client.post(f"/api/avatars/{avatar_id}/jobs", files={"video": (name, data, "video/mp4")})
        assert (r.status_code, r.json()) == (422, {"error": expected})
    assert expected == "still.png: the driver must be a video"
    assert client.get("/api/stats").json()["jobs"] == 0  # refused uploads leave no job behind


def test_unknown_ids_are_404(client, sample_video):
    r = client.post("/api/avatars/nope/jobs", files={"video": ("v.mp4", sample_video.read_bytes(), "video/mp4")})
    assert r.status_code == 404 and r.json()["error"].startswith("no avatar 'nope'")
    assert client.get("/api/jobs/nope").status_code == 404
    assert client.delete("/api/avatars/nope").status_code == 404
    assert refused(client, "/api/avatars/nope/drive").status_code == 404


# ---- videos -----------------------------------------------------------------------------------------


def test_animate_returns_a_playable_mp4_with_the_drivers_audio(client, avatar_id, sample_video, tmp_path):
    import av

    video = {"video": ("interview.mp4", sample_video.read_bytes(), "video/mp4")}
    r = client.post(f"/api/avatars/{avatar_id}/animate", files=video)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp4"
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    with MediaReader(out) as reader:
        frames = [rgb for _, _, rgb in reader.frames()]
        assert (len(frames), reader.info.fps) == (50, 25.0)  # every frame of the 2 s driver
    assert frames[0].shape == (64, 64, 3)
    with av.open(str(out)) as container:
        assert len(container.streams.audio) == 1
    assert client.get("/api/stats").json()["jobs"] == 0  # its files removed once sent


def test_a_video_job_reports_its_state_and_serves_the_mp4(client, avatar_id, sample_video, portrait, tmp_path):
    r = client.post(f"/api/avatars/{avatar_id}/jobs?paste_back=1",
                    files={"video": ("interview.mp4", sample_video.read_bytes(), "video/mp4")})
    assert r.status_code == 202 and r.json()["state"] in ("queued", "running")
    job = r.json()["id"]
    assert client.get(f"/api/jobs/{job}/video").status_code in (200, 409)  # 409 while it runs
    deadline = time.monotonic() + 60
    while (status := client.get(f"/api/jobs/{job}").json())["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status["state"] == "done" and status["frames"] == 50 and status["has_audio"]
    assert status["done_frames"] == status["total_frames"] == 50  # the page's progress bar
    video = client.get(status["video"] + "?download=1")
    assert video.headers["content-disposition"].startswith("attachment")
    out = tmp_path / "job.mp4"
    out.write_bytes(video.content)
    with MediaReader(out) as reader:
        h, w = cv2.imread(str(portrait)).shape[:2]
        assert (reader.info.width, reader.info.height) == (w, h)  # pasted back: the photo's size


def test_job_options_are_checked_before_the_upload(client, avatar_id):
    r = client.post(f"/api/avatars/{avatar_id}/jobs?paste_back=1&background=white",
                    files={"video": ("v.mp4", b"x", "video/mp4")})
    assert (r.status_code, r.json()) == (
        422, {"error": "background 'white' does not apply with paste_back (the photo is behind)"})


# ---- tokens -----------------------------------------------------------------------------------------


def test_a_token_is_needed_on_every_request_and_websocket(tiny_checkpoint, portrait, camera):
    with TestClient(create_app(ServeConfig(tiny_checkpoint, token=TOKEN))) as c:
        for headers, query in (({}, ""), ({"Authorization": "Bearer wrong"}, ""), ({}, "?token=wrong")):
            for path in ("/", "/api/stats"):
                r = c.get(path + query, headers=headers)
                assert r.status_code == 401 and "token" in r.json()["error"]
            assert upload_photo(c, portrait, headers=headers).status_code == 401
            assert refused(c, f"/api/avatars/any/drive{query}", headers=headers).status_code == 401
        assert c.get("/static/app.js").status_code == 200  # the page's code is public
        assert c.get("/", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get(f"/api/stats?token={TOKEN}").status_code == 200
        made = upload_photo(c, portrait, headers={"Authorization": f"Bearer {TOKEN}"}).json()
        assert len(drive(c, made["id"], camera[:2], f"?token={TOKEN}")) == 2


def test_other_hosts_need_a_token():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("example.org")
    assert resolve_token("127.0.0.1", None) == (None, False)
    assert resolve_token("0.0.0.0", "mine") == ("mine", False)
    token, generated = resolve_token("0.0.0.0", None)
    assert generated and len(token) >= 32 and token != resolve_token("0.0.0.0", None)[0]


def test_the_serve_command_binds_with_a_generated_token(tiny_checkpoint, monkeypatch, capsys):
    import uvicorn

    calls = []

    def run(app, **kw):
        calls.append((app, kw))
        with TestClient(app):  # starts and stops it, as uvicorn would
            pass

    monkeypatch.setattr(uvicorn, "run", run)
    assert main(["serve", "--checkpoint", str(tiny_checkpoint), "--host", "0.0.0.0", "--port", "8123"]) == 0
    (app, kw), = calls
    assert (kw["host"], kw["port"]) == ("0.0.0.0", 8123)
    out = capsys.readouterr().out
    token = out.split("?token=")[1].split()[0]
    assert app.state.server.config.token == token and "http://0.0.0.0:8123/?token=" in out
    assert main(["serve", "--checkpoint", str(tiny_checkpoint.parent / "missing.pt")]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err


def test_bilayer_help_imports_neither_torch_nor_fastapi():
    import subprocess

    code = ("import sys; from bilayer.cli.main import build_parser; build_parser(); "
            "print(sorted({'torch', 'fastapi'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- clients that vanish, clients at once -----------------------------------------------------------


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_client_that_vanishes_mid_stream_frees_its_stream(client, avatar_id, camera):
    stats = lambda: client.get("/api/stats").json()  # noqa: E731
    drive(client, avatar_id, camera[:1])  # one annotator made and pooled
    wait_for(lambda: not stats()["streams"])
    threads = threading.active_count()
    for _ in range(3):
        with client.websocket_connect(f"/api/avatars/{avatar_id}/drive") as ws:
            for frame in camera[:4]:
                ws.send_bytes(frame)  # gone without reading the answers, frames in flight
        wait_for(lambda: not stats()["streams"])
        assert stats()["idle_annotators"] == 1  # its detector went back to the pool, not leaked
    assert threading.active_count() <= threads + 1
    assert len(drive(client, avatar_id, camera[:3])) == 3  # and the server goes on


def test_several_clients_at_once_while_an_avatar_is_made(client, avatar_id, portrait, camera, monkeypatch):
    """Three streams of one avatar (its renders take turns) run together, and run on while another
    avatar is made: long work never stalls the live frames (made slower here, so that the streams
    end first unless they wait for it)."""
    server = client.app.state.server
    make_avatar = server.make_avatar

    def slow(*args):
        entry = make_avatar(*args)
        time.sleep(2)
        return entry

    monkeypatch.setattr(server, "make_avatar", slow)
    results, ended, errors = {}, {}, []

    def run(name: str, work) -> None:
        try:
            results[name] = work()
            ended[name] = time.monotonic()
        except Exception as e:  # reported by the test
            errors.append(e)

    threads = [threading.Thread(target=run, args=("made", lambda: upload_photo(client, portrait)))]
    threads += [threading.Thread(target=run, args=(f"s{i}", lambda: drive(client, avatar_id, camera))) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and results["made"].status_code == 201
    assert all(len(results[f"s{i}"]) == len(camera) for i in range(3))
    assert max(ended[f"s{i}"] for i in range(3)) < ended["made"]
    for i in (1, 2):  # the same driver's renders (its crop smoothed at each stream's own arrival times)
        assert np.abs(results["s0"][-1].astype(float) - results[f"s{i}"][-1]).mean() < 3


# ---- the avatar cache -------------------------------------------------------------------------------


class Held:
    """Stands in for an avatar: memory_bytes counts the bilayer-module object's tensors."""

    __module__ = "bilayer.tests"

    def __init__(self, nbytes: int):
        self.tensor = torch.zeros(nbytes, dtype=torch.uint8)


def entry(tmp_path: Path, name: str, nbytes: int) -> AvatarEntry:
    folder = tmp_path / name
    folder.mkdir()
    return AvatarEntry(name, Held(nbytes), folder / "photo.png", folder)


def test_the_cache_evicts_the_least_recently_used_by_count(tmp_path):
    cache = AvatarCache(max_count=2, max_bytes=10**9)
    a, b, c = (entry(tmp_path, n, 100) for n in "abc")
    assert cache.add(a) == [] and cache.add(b) == []
    cache.get("a")  # a used: b is now the oldest
    assert cache.add(c) == [b]
    assert cache.get("b") is None and cache.get("a") is a and len(cache) == 2
    assert not b.folder.exists() and a.folder.exists()  # an evicted avatar's files go with it


def test_the_cache_evicts_by_tensor_memory(tmp_path):
    cache = AvatarCache(max_count=10, max_bytes=2500)
    a, b, c = (entry(tmp_path, n, 1000) for n in "abc")
    assert a.nbytes == 1000
    cache.add(a), cache.add(b)
    assert cache.add(c) == [a] and cache.nbytes == 2000
    with pytest.raises(CacheFull):
        cache.add(entry(tmp_path, "d", 3000))


def test_avatars_share_the_servers_model(client, portrait):
    server = client.app.state.server
    ids = [client.post("/api/avatars", files={"photo": ("p.png", portrait.read_bytes(), "image/png")}).json()["id"]
           for _ in range(2)]
    entries = [server.avatars.get(i) for i in ids]
    assert all(e.avatar.model is server.model for e in entries)
    model = sum(t.numel() * t.element_size() for t in [*server.model.parameters(), *server.model.buffers()])
    assert all(e.nbytes < model for e in entries)  # the tiny model's weights are not counted per avatar
    assert client.get("/api/stats").json()["model"]["bytes"] >= model  # reported once, for the server


def test_memory_bytes_counts_an_avatars_tensors_once(tiny_checkpoint, portrait):
    avatar = Avatar.from_image(portrait, tiny_checkpoint)
    model = sum(t.numel() * t.element_size() for t in [*avatar.model.parameters(), *avatar.model.buffers()])
    n = memory_bytes(avatar)
    assert n > model + avatar.state.texture.numel() * 4  # + folded network, runner's copy, crop, photo
    assert memory_bytes([avatar, avatar]) == n  # shared objects counted once


def test_the_app_keeps_to_its_avatar_and_stream_limits(tiny_checkpoint, portrait, camera):
    app = create_app(ServeConfig(tiny_checkpoint, max_avatars=1, max_streams=1))
    with TestClient(app) as c:
        first = upload_photo(c, portrait).json()["id"]
        second = upload_photo(c, portrait).json()["id"]
        assert c.get("/api/stats").json()["avatars"]["count"] == 1
        assert refused(c, f"/api/avatars/{first}/drive").status_code == 404
        with c.websocket_connect(f"/api/avatars/{second}/drive") as ws:
            denied = refused(c, f"/api/avatars/{second}/drive")
            assert (denied.status_code, denied.json()) == (
                503, {"error": "too many camera streams: the server drives at most 1 at once"})
            ws.send_bytes(camera[0])
            assert decode(ws.receive_bytes()).shape == (64, 64, 3)
        assert c.delete(f"/api/avatars/{second}").status_code == 204
        assert c.get("/api/stats").json()["avatars"] == {"count": 0, "bytes": 0, "max_count": 1,
                                                          "max_bytes": ServeConfig(None).max_avatar_bytes}
    assert not app.state.server.root.exists()  # the server's files go when it stops
