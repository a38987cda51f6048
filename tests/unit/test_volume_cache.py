"""Eviction of the host's volume cache: only entries unused for the TTL, never one in use."""

from __future__ import annotations

import os
import shutil
import threading
import time

from activities.storage.volume_cache import LAST_USED, VolumeCache


def _fill(cache: VolumeCache, bucket: str, age_s: float):
    entry = cache.entry("proj", "local", bucket, "")
    with cache.locked(entry):
        data = cache.data(entry)
        data.mkdir(parents=True)
        (data / "f.bin").write_bytes(b"x" * 10)
        cache.touch(entry)
    then = time.time() - age_s
    os.utime(entry / LAST_USED, (then, then))
    return entry


def test_evicts_only_entries_unused_for_the_ttl(tmp_path) -> None:
    cache = VolumeCache(tmp_path / "cache", ttl_s=3600)
    old = _fill(cache, "old", age_s=7200)
    fresh = _fill(cache, "fresh", age_s=60)
    assert cache.entry("proj", "local", "old", "") != cache.entry("proj", "local", "old", "p")
    assert cache.evict() == [old]
    assert not old.exists() and (cache.data(fresh) / "f.bin").exists()


def test_an_entry_in_use_is_not_evicted_and_survives_for_its_user(tmp_path) -> None:
    cache = VolumeCache(tmp_path / "cache", ttl_s=10)
    entry = _fill(cache, "busy", age_s=100)
    with cache.locked(entry):
        assert cache.evict() == []
        assert (cache.data(entry) / "f.bin").exists()
    assert cache.evict() == [entry]


def test_a_waiter_gets_a_fresh_entry_when_the_one_it_waited_for_was_evicted(tmp_path) -> None:
    cache = VolumeCache(tmp_path / "cache", ttl_s=10)
    entry = _fill(cache, "gone", age_s=100)
    got = threading.Event()
    order: list[str] = []

    def waiter() -> None:
        with cache.locked(entry):
            order.append("waiter")
            got.set()

    # Evict while the waiter blocks on the lock: it must not hold a lock on a removed file.
    fd_holder = cache.locked(entry)
    fd_holder.__enter__()
    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.3)
    assert not got.is_set()
    shutil.rmtree(entry)
    order.append("evicted")
    fd_holder.__exit__(None, None, None)
    t.join(5)
    assert order == ["evicted", "waiter"]
    assert (entry / ".lock").exists()  # the waiter locked a lock file that exists
