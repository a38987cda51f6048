"""`tail -n N [-f]` over a log file: the local-process runtime's logs."""

from __future__ import annotations

import threading
import time

from activities.runtime.file_logs import FileLogStream


def test_tail_and_all(tmp_path) -> None:
    log = tmp_path / "editor.log"
    log.write_bytes(b"one\ntwo\nthree\n")
    assert b"".join(FileLogStream(log, 2, follow=False)) == b"two\nthree\n"
    assert b"".join(FileLogStream(log, -1, follow=False)) == b"one\ntwo\nthree\n"
    assert b"".join(FileLogStream(log, 0, follow=False)) == b""
    assert list(FileLogStream(tmp_path / "none.log", 5, follow=False)) == []


def test_follow_until_the_process_exits(tmp_path) -> None:
    log = tmp_path / "editor.log"
    log.write_bytes(b"old\n")
    alive = threading.Event()
    alive.set()
    stream = FileLogStream(log, 0, follow=True, alive=alive.is_set)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.extend(stream))
    reader.start()
    time.sleep(0.3)
    with open(log, "ab") as f:
        f.write(b"new\n")
        f.flush()
        time.sleep(0.5)
        f.write(b"last words\n")
    alive.clear()
    reader.join(5)
    assert not reader.is_alive()
    assert b"".join(got) == b"new\nlast words\n"


def test_close_ends_a_follow(tmp_path) -> None:
    log = tmp_path / "editor.log"
    log.write_bytes(b"")
    stream = FileLogStream(log, 0, follow=True, alive=lambda: True)
    reader = threading.Thread(target=lambda: list(stream))
    reader.start()
    time.sleep(0.2)
    stream.close()
    reader.join(2)
    assert not reader.is_alive()
