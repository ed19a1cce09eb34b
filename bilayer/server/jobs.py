"""Driving videos rendered by the runtime's `animate` (the pipeline of `bilayer animate`), as jobs
that run on a worker thread while the page polls their state.

A job goes uploading -> queued -> running -> done | failed. The store keeps at most `max_jobs`:
a new job pushes out the oldest finished one (its files removed); when none has finished, it is
refused (`StoreFull`, HTTP 429). Job ids are unguessable like avatar ids.
"""
from __future__ import annotations

import asyncio
import logging
import shutil
import time
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from bilayer.errors import InputError
from bilayer.runtime.pipeline import AnimateResult
from bilayer.server.avatars import new_id
from bilayer.server.uploads import public_message

log = logging.getLogger(__name__)
FINISHED = ("done", "failed")


class StoreFull(RuntimeError):
    """Every kept job is still unfinished."""


@dataclass
class Job:
    id: str
    folder: Path  # its upload, the photo and the output video, removed with the job
    state: str = "uploading"
    error: str | None = None  # the one-line reason of a failed job
    error_status: int = 422  # its HTTP status: 422 bad input, 500 the server failed
    result: AnimateResult | None = None
    done_frames: int = 0  # rendered so far
    total_frames: int | None = None  # of the driver, when its file says
    created: float = field(default_factory=time.monotonic)
    finished: float | None = None
    future: asyncio.Future | None = None

    def progress(self, done: int, total: int | None) -> None:
        """`animate`'s per-frame callback (from the worker thread)."""
        self.done_frames, self.total_frames = done, total

    def status(self) -> dict:
        """The job as the API shows it."""
        end = self.finished if self.finished is not None else time.monotonic()
        status = {"id": self.id, "state": self.state, "elapsed_s": round(end - self.created, 1), "error": self.error,
                  "done_frames": self.done_frames, "total_frames": self.total_frames}
        if self.result is not None:
            status |= {"frames": self.result.frames, "fps": self.result.fps, "has_audio": self.result.has_audio,
                       "video": f"/api/jobs/{self.id}/video"}
        return status

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


class JobStore:
    """Jobs by id (see the module), run on `executor`; used from the event loop."""

    def __init__(self, max_jobs: int, executor: Executor, root: Path):
        self.max_jobs, self.executor, self.root = max_jobs, executor, root
        self._jobs: dict[str, Job] = {}

    def __len__(self) -> int:
        return len(self._jobs)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def create(self) -> Job:
        """A new job (state "uploading") with an empty folder, making room if needed."""
        while len(self._jobs) >= self.max_jobs:
            done = [j for j in self._jobs.values() if j.state in FINISHED]
            if not done:
                raise StoreFull(f"the server runs at most {self.max_jobs} video jobs at once; "
                                "try again when one has finished")
            self.remove(min(done, key=lambda j: j.finished).id)
        job_id = new_id()
        job = Job(job_id, self.root / job_id)
        job.folder.mkdir(parents=True)
        self._jobs[job.id] = job
        return job

    def start(self, job: Job, render: Callable[[], AnimateResult]) -> asyncio.Future:
        """Queue `render` (writes the job's video) on the executor; the future resolves to the job."""
        job.state = "queued"
        job.future = asyncio.get_running_loop().run_in_executor(self.executor, self._run, job, render)
        return job.future

    def _run(self, job: Job, render: Callable[[], AnimateResult]) -> Job:
        job.state = "running"
        try:
            job.result = render()
            job.state = "done"
        except InputError as e:
            job.error, job.state = public_message(e, self.root), "failed"
        except Exception as e:  # noqa: BLE001 - reported as the job's state, logged with its traceback
            log.exception("video job %s failed", job.id)
            job.error, job.error_status = f"internal error ({type(e).__name__}); see the server's log", 500
            job.state = "failed"
        job.finished = time.monotonic()
        return job

    def remove(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            job.close()

    def clear(self) -> None:
        for job_id in list(self._jobs):
            self.remove(job_id)
