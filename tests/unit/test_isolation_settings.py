"""What the host agent refuses to run notebooks with: host networking without the
operator's named opt-out, and a silent fall back to host processes."""

from __future__ import annotations

import logging

import pytest

from domain.config import Settings
from worker import host


def test_host_networking_is_refused_without_the_named_opt_out() -> None:
    with pytest.raises(host.UnsafeSettings) as err:
        host.check_isolation(Settings(notebook_network="host"))
    assert "unsafe_notebooks_share_host_network" in str(err.value)


def test_the_opt_out_is_said_at_every_start(caplog) -> None:
    settings = Settings(notebook_network="host", unsafe_notebooks_share_host_network=True)
    with caplog.at_level(logging.WARNING, logger="ainb.host"):
        host.check_isolation(settings)
    assert "UNSAFE" in caplog.text


@pytest.mark.parametrize("network", ["none", "ainb-egress"])
def test_own_namespaces_need_nothing(network: str, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger="ainb.host"):
        host.check_isolation(Settings(notebook_network=network))
    assert caplog.text == ""


def test_no_engine_is_no_silent_fallback_to_host_processes(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(host, "engine_answers", lambda: False)
    with pytest.raises(host.UnsafeSettings) as err:
        host.choose_runtime(Settings(runtime="auto", data_dir=tmp_path))
    assert "runtime 'local'" in str(err.value)
    # Asked for by name, it is what the operator gets, and the log says what it means.
    assert host.choose_runtime(Settings(runtime="local", data_dir=tmp_path)).name == "local-process"
