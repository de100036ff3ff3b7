"""The cache lock: processes racing for one entry extract it once, with either kind of lock; stale lock files."""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from pathlib import Path

import pytest

from experiments.store import KeyStore
from experiments.store.lock import LOCKS, ExclusiveFileLock

from .test_keystore import DESCRIPTOR, _record

RACERS = 6


def _race(root: str, kind: str, start: multiprocessing.synchronize.Barrier) -> None:
    """One job: take the entry's lock, prove nobody else is inside, extract shard 0 if it is still missing."""
    store = KeyStore(root, DESCRIPTOR, n_samples=2)
    start.wait()
    with store.lock(kind, stale_after=5.0):
        inside = os.open(Path(root) / "inside", os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # raises if another holds it
        time.sleep(0.05)
        if store.missing([0]):
            Path(root, f"extracted-{os.getpid()}").touch()
            time.sleep(0.2)  # a slow extraction: the others must wait, then find the shard complete
            store.write(0, [0], [_record(0, 4, layers=(0,)), _record(1, 5, layers=(0,))], skipped=[])
        os.close(inside)
        os.unlink(Path(root) / "inside")


@pytest.mark.parametrize("kind", LOCKS)
def test_processes_racing_for_one_entry_extract_it_once(tmp_path, kind):
    context = multiprocessing.get_context("fork")
    start = context.Barrier(RACERS)
    racers = [context.Process(target=_race, args=(str(tmp_path), kind, start)) for _ in range(RACERS)]
    for racer in racers:
        racer.start()
    for racer in racers:
        racer.join(timeout=60)
    assert [r.exitcode for r in racers] == [0] * RACERS
    assert len(list(tmp_path.glob("extracted-*"))) == 1
    assert KeyStore(tmp_path, DESCRIPTOR, n_samples=2).missing([0]) == {}


def test_a_lock_file_left_by_a_dead_holder_is_broken(tmp_path, caplog):
    """A lock file whose content never changes (its holder died) is broken after `stale_after` seconds."""
    path = tmp_path / ".lockfile"
    path.write_text("node7 4242 deadbeef 3\n")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING), ExclusiveFileLock(path, stale_after=0.5, poll=0.05):
        waited = time.monotonic() - started
        assert path.read_text().startswith(f"{os.uname().nodename} {os.getpid()} ")
    assert 0.5 <= waited < 5 and "node7 4242 deadbeef 3" in caplog.text
    assert not path.exists() and not path.with_name(".lockfile.break").exists()


def test_a_live_holder_keeps_its_lock_past_stale_after(tmp_path):
    """The heartbeat rewrites the file, so a waiter never breaks a lock held for longer than stale_after."""
    path = tmp_path / ".lockfile"
    holder = ExclusiveFileLock(path, stale_after=0.3, poll=0.05)
    holder.acquire()
    released = threading.Event()

    def release_later() -> None:
        time.sleep(1.5)
        released.set()
        holder.release()

    threading.Thread(target=release_later).start()
    with ExclusiveFileLock(path, stale_after=0.3, poll=0.05):
        assert released.is_set()
