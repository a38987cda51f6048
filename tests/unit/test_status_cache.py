"""The status cache's pure rules: what counts as a change, what must be re-read on a
clock, and what a stream resumed from a version has already shown."""

from __future__ import annotations

from api.status_cache import Entry, content_key, needs_extras
from domain.status import Notebook
from tests.unit.test_cli_render import notebook, with_sync


def _nb(state: str = "RUNNING", version: int = 1, **info) -> Notebook:
    nb = Notebook.model_validate(notebook(state, **info))
    nb.status.version = version
    return nb


def test_a_new_version_alone_is_not_a_change() -> None:
    assert content_key(_nb(version=1)) == content_key(_nb(version=9))
    assert content_key(_nb("RUNNING")) != content_key(_nb("STOPPING"))
    assert content_key(_nb(message="a")) != content_key(_nb(message="b"))


def test_what_changes_without_an_event_is_read_on_a_clock() -> None:
    assert needs_extras(_nb("STARTING", code="QUEUED", message="queued: number 2 in line"))
    assert not needs_extras(_nb("STARTING", message="pulling volumes"))
    syncing = Notebook.model_validate(with_sync(notebook("STARTING"), "running", 1, 4))
    assert needs_extras(syncing)
    done = Notebook.model_validate(with_sync(notebook("STARTING"), "done", 4, 4))
    assert not needs_extras(done)


async def test_an_entry_wakes_waiters_on_a_change_and_remembers_what_it_served() -> None:
    entry = Entry(("p", "n"))
    woken = entry.changed
    entry.store(_nb(version=3), _nb(version=3))
    assert woken.is_set() and not entry.changed.is_set()
    again = entry.changed
    entry.store(_nb(version=3), _nb(version=3))  # the same answer: nobody is woken
    assert not again.is_set()
    entry.store(_nb("STOPPING", version=7), _nb("STOPPING", version=7))
    assert again.is_set()
    assert entry.key_at(3) == entry.key_at(5) == content_key(_nb(version=3))
    assert entry.key_at(7) == content_key(_nb("STOPPING"))
    assert entry.key_at(2) is None  # before anything this process served
