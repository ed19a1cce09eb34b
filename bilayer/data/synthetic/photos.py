"""Real face photos that registry packages ship, with their identities.

Two come with installed wheels (scikit-image's astronaut, matplotlib's Grace Hopper). Four more
(three photos of Barack Obama, one of Joe Biden) are test images inside the source distribution of
PyPI's `face_recognition==1.3.0`: it is fetched once with pip into a cache folder and the photos
are read out of the tarball, without installing anything.
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path
from typing import NamedTuple

from bilayer.data.samples import SAMPLE_PHOTOS
from bilayer.errors import InputError

SDIST = "face_recognition-1.3.0"
SDIST_REQUIREMENT = "face_recognition==1.3.0"
# Photo stem -> identity. The sdist's obama_partial_face*.jpg and 32bit.png are crops and a copy
# of these, so they would only duplicate data.
SDIST_PHOTOS = {"obama": "obama", "obama2": "obama", "obama3": "obama", "biden": "biden"}
PACKAGE_PHOTOS = {"astronaut": "astronaut", "grace_hopper": "grace_hopper"}  # SAMPLE_PHOTOS name -> identity


class Photo(NamedTuple):
    identity: str
    path: Path

    @property
    def name(self) -> str:
        """Unique short name of the photo (its file stem)."""
        return self.path.stem


def _fetch_sdist(cache_dir: Path) -> Path:
    """The sdist tarball in `cache_dir`, downloaded by pip on the first call."""
    archive = cache_dir / f"{SDIST}.tar.gz"
    if archive.is_file():
        return archive
    cache_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--quiet",
           "--disable-pip-version-check", "--timeout", "20", "--retries", "1", SDIST_REQUIREMENT, "-d", str(cache_dir)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not archive.is_file():
        lines = [line.strip() for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        reason = lines[-1] if lines else f"pip exited with code {result.returncode}"
        raise InputError(f"{cache_dir}: cannot download {SDIST_REQUIREMENT} from PyPI ({reason})")
    return archive


def _extract_sdist_photos(cache_dir: Path) -> list[Photo]:
    folder = cache_dir / SDIST
    targets = {stem: folder / f"{stem}.jpg" for stem in SDIST_PHOTOS}
    missing = [stem for stem, path in targets.items() if not path.is_file()]
    if missing:
        archive = _fetch_sdist(cache_dir)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tar:
                for stem in missing:
                    data = tar.extractfile(f"{SDIST}/tests/test_images/{stem}.jpg").read()
                    partial = targets[stem].with_suffix(".part")
                    partial.write_bytes(data)
                    partial.replace(targets[stem])  # atomic: a killed run leaves no truncated photo
        except (tarfile.TarError, KeyError, OSError) as e:
            raise InputError(f"{archive}: cannot read the test photos ({e}); delete it to fetch it again") from None
    return [Photo(SDIST_PHOTOS[stem], path) for stem, path in targets.items()]


def sample_photos(cache_dir: str | Path | None) -> list[Photo]:
    """All registry face photos as (identity, path), sorted by identity then name.

    `cache_dir` holds the face_recognition sdist and its extracted photos (fetched on the first
    call, reused afterwards); None gives only the two photos of installed packages.
    """
    photos = [Photo(identity, SAMPLE_PHOTOS[name].path) for name, identity in PACKAGE_PHOTOS.items()]
    if cache_dir is not None:
        photos += _extract_sdist_photos(Path(cache_dir))
    return sorted(photos, key=lambda p: (p.identity, p.name))
