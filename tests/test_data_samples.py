"""Sample media: registry-shipped photos and the real video files made from them."""
from __future__ import annotations

import av
import numpy as np

from bilayer.data.samples import SAMPLE_PHOTOS, load_photo, make_sample_video
from bilayer.io.media import MediaReader


def test_sample_photos_ship_with_installed_packages():
    for name, photo in SAMPLE_PHOTOS.items():
        assert photo.path.is_file(), name
        image = load_photo(name)
        assert image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8 and min(image.shape[:2]) >= 256


def test_sample_video_has_moving_head_and_audio(sample_video):
    with av.open(str(sample_video)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        audio = np.concatenate([f.to_ndarray().ravel() for f in c.decode(audio=0)])
    assert audio.size > 1.5 * 16000 and 0.01 < np.abs(audio).mean() < 0.5
    with MediaReader(sample_video) as media:
        assert media.info.fps == 25 and (media.info.width, media.info.height) == (512, 600)
        frames = np.stack([f for _, _, f in media.frames()])  # (50, 600, 512, 3)
    motion = np.abs(frames[1:].astype(int) - frames[:-1]).mean((0, 3))  # (600, 512)
    cx, cy, size = SAMPLE_PHOTOS["grace_hopper"].face
    assert motion[int(cy) - 20 : int(cy) + 20, int(cx) - 20 : int(cx) + 20].mean() > 4 * motion[:40, :40].mean()


def test_avi_with_mpeg4_and_mp2(tmp_path):
    path = make_sample_video(tmp_path / "clip.avi", "astronaut", seconds=0.4, codec="mpeg4")
    with av.open(str(path)) as c:
        assert [s.codec_context.name for s in c.streams] == ["mpeg4", "mp2"]
        assert sum(1 for _ in c.decode(video=0)) == 10
