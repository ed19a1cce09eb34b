"""Settings of `bilayer serve`, without importing torch or FastAPI (the CLI reads them for --help)."""
from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
#: Host names that reach only this machine: serving them needs no token.
LOOPBACK_NAMES = frozenset({"localhost"})


@dataclass(frozen=True)
class ServeConfig:
    checkpoint: Path | None  # None: the shipped demo model (`checkpoint.resolve_checkpoint`)
    token: str | None = None  # required on every request and WebSocket when set
    backend: str = "torch"
    precision: str = "auto"  # bf16 where the CPU has it natively (checked per avatar), fp32 elsewhere
    max_photo_bytes: int = 20 * MB
    max_video_bytes: int = 200 * MB
    max_frame_bytes: int = 4 * MB  # one camera frame (WebSocket message)
    max_pixels: int = 40_000_000  # of a photo or a video frame (decompression bombs)
    max_avatars: int = 8
    max_avatar_bytes: int = 4000 * MB  # tensors of all cached avatars (models, folded nets, textures)
    max_streams: int = 8  # camera streams at once
    max_jobs: int = 4  # video jobs kept (queued, running or finished; finished ones make room)
    workers: int = max(1, os.cpu_count() or 1)  # threads for live frames; half as many for long work


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or an address) is reachable from this machine only."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, token: str | None) -> tuple[str | None, bool]:
    """(the token to require, whether it was generated): a host other than loopback always needs
    one, generated with `secrets` when none is given."""
    if token is not None or is_loopback(host):
        return token, False
    return secrets.token_urlsafe(24), True
