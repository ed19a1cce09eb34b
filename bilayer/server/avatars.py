"""Avatars of the server: created once per uploaded photo, kept by unguessable id in an LRU cache
bounded by their count and by the bytes of their tensors.

An avatar's `render` runs a torch module; `AvatarEntry.lock` makes the renders of one avatar take
turns (several streams may drive the same avatar), while different avatars render in parallel.
"""
from __future__ import annotations

import secrets
import shutil
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bilayer.io.files import format_size
from bilayer.runtime.avatar import Avatar


class CacheFull(RuntimeError):
    """One avatar is larger than the whole cache may hold."""


def new_id() -> str:
    """An unguessable id (128 random bits, URL-safe)."""
    return secrets.token_urlsafe(16)


def memory_bytes(obj: Any) -> int:
    """Bytes of the distinct tensors (storages counted once) and arrays reachable from `obj`
    through containers, modules and the attributes of bilayer's own objects: for an avatar, its
    folded network, runner (oneDNN's packed weights too), state and photo crop."""
    seen: set[int] = set()
    storages: set[int] = set()
    total, todo = 0, [obj]
    while todo:
        item = todo.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, torch.Tensor) and item.is_mkldnn:  # oneDNN's packed weights: no storage
            total += item.numel() * item.element_size()
        elif isinstance(item, torch.Tensor):
            storage = item.untyped_storage()
            if storage.data_ptr() not in storages:
                storages.add(storage.data_ptr())
                total += storage.nbytes()
        elif isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, dict):
            todo.extend(item.values())
        elif isinstance(item, (list, tuple)):
            todo.extend(item)
        elif isinstance(item, nn.Module) or type(item).__module__.startswith("bilayer."):
            todo.extend(vars(item).values())
    return total


@dataclass
class AvatarEntry:
    id: str
    avatar: Avatar
    photo: Path  # the uploaded photo, for video jobs (`animate` takes a file)
    folder: Path  # the avatar's files, removed with it
    nbytes: int = field(init=False)  # memory_bytes(avatar)
    lock: threading.Lock = field(default_factory=threading.Lock, init=False)  # one render at a time

    def __post_init__(self) -> None:  # the model is the server's, shared by every avatar
        self.nbytes = memory_bytes([v for k, v in vars(self.avatar).items() if k != "model"])

    def close(self) -> None:
        """Remove the avatar's files (streams that still hold it keep rendering)."""
        shutil.rmtree(self.folder, ignore_errors=True)


class AvatarCache:
    """Avatars by id, least recently used out first, so that at most `max_count` avatars and
    `max_bytes` of their tensors stay. Used from the event loop only (no lock)."""

    def __init__(self, max_count: int, max_bytes: int):
        self.max_count, self.max_bytes = max_count, max_bytes
        self._entries: OrderedDict[str, AvatarEntry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self._entries.values())

    def get(self, avatar_id: str) -> AvatarEntry | None:
        entry = self._entries.get(avatar_id)
        if entry is not None:
            self._entries.move_to_end(avatar_id)
        return entry

    def add(self, entry: AvatarEntry) -> list[AvatarEntry]:
        """Insert `entry` as the most recent; returns the avatars evicted (already closed)."""
        if entry.nbytes > self.max_bytes:
            raise CacheFull(f"the avatar takes {format_size(entry.nbytes)}, more than the server's avatar memory "
                            f"limit of {format_size(self.max_bytes)}")
        self._entries[entry.id] = entry
        evicted = []
        while len(self._entries) > self.max_count or self.nbytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            old.close()
            evicted.append(old)
        return evicted

    def remove(self, avatar_id: str) -> AvatarEntry | None:
        entry = self._entries.pop(avatar_id, None)
        if entry is not None:
            entry.close()
        return entry

    def clear(self) -> None:
        while self._entries:
            self._entries.popitem()[1].close()
