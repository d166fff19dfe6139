"""An exclusive lock on a run folder, so two ``prepo train`` never write one run at the same time.

``fcntl.flock`` on ``<run>/.prepo.lock`` (holding the owner's pid); the kernel releases it when the process ends.
"""
from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = ".prepo.lock"


class RunLockedError(OSError):
    """Another live process holds the run folder's lock (the message names its pid)."""


class RunLock:
    """``with RunLock(run_dir):`` holds the folder's lock (created with the folder if need be) until the block ends;
    RunLockedError at once when another process holds it. A folder this lock created and nothing else wrote in is
    removed again on release (a run refused before it wrote anything leaves no trace)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> "RunLock":
        if self._fd is not None:
            return self
        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OSError(f"run_dir: cannot create {self.run_dir} ({exc.strerror or exc})") from None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunLockedError(f"run_dir: {self.run_dir} is in use by another `prepo train` (pid {holder}); "
                                     "wait for it to end or stop it, or choose another --output-dir") from None
            # a releasing owner unlinks the file: a lock on an unlinked file guards nothing, so take the new one
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            self.path.unlink()  # while still held: a waiting process then retries on a fresh file
        except FileNotFoundError:
            pass
        os.close(self._fd)
        self._fd = None
        if self._created:
            try:
                self.run_dir.rmdir()  # only when empty
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
