"""The key cache's lock, in two kinds: `fcntl` (kernel locks) and `lockfile` (for file systems without them).

`fcntl` (`paths.cache_lock=fcntl`, the default) is `filelock.FileLock`: released by the kernel when its holder
dies, exclusive on local disks and on NFS or Lustre mounts whose lock service works, but silently not exclusive
on mounts without one (NFS `nolock` / `local_lock=all`, Lustre mounted without `flock`).

`lockfile` (`paths.cache_lock=lockfile`) needs only an atomic exclusive create, which NFSv3+ and Lustre give:
`ExclusiveFileLock` creates the lock file with O_CREAT|O_EXCL, writes a token (host, pid, random) into it and
rewrites it with a beat counter every `stale_after / 4` seconds while held. A waiter that reads the same content
for `stale_after` seconds of its own clock (no clock is compared across machines) takes the holder for dead and
breaks the lock, under a second exclusive file (`<lock>.break`) so that only one waiter breaks it. Jobs that
share a cache entry must all use the same kind.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

LOCKS = ("fcntl", "lockfile")  # paths.cache_lock


def cache_lock(path: str | Path, kind: str, stale_after: float) -> Any:
    """A context manager holding the lock of kind `kind` (one of `LOCKS`) on `path`."""
    if kind == "lockfile":
        return ExclusiveFileLock(path, stale_after)
    from filelock import FileLock

    return FileLock(str(path))


class ExclusiveFileLock:
    """An O_CREAT|O_EXCL lock file with a heartbeat and stale-lock breaking (see the module docstring)."""

    def __init__(self, path: str | Path, stale_after: float = 120.0, poll: float = 0.2):
        self.path = Path(path)
        self.breaker = self.path.with_name(self.path.name + ".break")
        self.stale_after, self.poll = stale_after, poll
        self._token = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex}"
        self._seen: dict[Path, tuple[str | None, float]] = {}  # path -> (content, when it was first read so)
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> ExclusiveFileLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self) -> None:
        """Wait until the lock file is ours, breaking a lock whose holder stopped beating."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if self._unchanged_for_stale(self.path):
                    self._break()
                time.sleep(self.poll)
                continue
            with os.fdopen(fd, "w") as f:
                f.write(f"{self._token} 0\n")
            self._stop.clear()
            self._beat = threading.Thread(target=self._heartbeat, daemon=True)
            self._beat.start()
            return

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._beat is not None:
            self._beat.join()
            self._beat = None
        if (_content(self.path) or "").startswith(self._token):
            self.path.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        beat = 0
        while not self._stop.wait(self.stale_after / 4):
            beat += 1
            try:
                with open(self.path, "r+") as f:
                    if not f.read().startswith(self._token):
                        log.error("the cache lock %s was broken by another job while held (no heartbeat for %.0f s)",
                                  self.path, self.stale_after)
                        return
                    f.seek(0)
                    f.write(f"{self._token} {beat}\n")
                    f.truncate()
            except FileNotFoundError:
                log.error("the cache lock %s was removed by another job while held", self.path)
                return

    def _unchanged_for_stale(self, path: Path) -> bool:
        """True once `path` has held the same content for `stale_after` seconds of this process's clock."""
        content, now = _content(path), time.monotonic()
        seen = self._seen.get(path)
        if content is None or seen is None or seen[0] != content:
            self._seen[path] = (content, now)
            return False
        return now - seen[1] >= self.stale_after

    def _break(self) -> None:
        """Remove the stale lock, holding `<lock>.break` so only one waiter does (a dead breaker's is stale too)."""
        try:
            os.close(os.open(self.breaker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if self._unchanged_for_stale(self.breaker):
                self.breaker.unlink(missing_ok=True)
            return
        try:
            stale = self._seen.pop(self.path, (None, 0.0))[0]
            if stale is not None and _content(self.path) == stale:
                log.warning("breaking the cache lock %s: its holder (%s) stopped beating %.0f s ago", self.path,
                            stale.strip(), self.stale_after)
                self.path.unlink(missing_ok=True)
        finally:
            self.breaker.unlink(missing_ok=True)


def _content(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
