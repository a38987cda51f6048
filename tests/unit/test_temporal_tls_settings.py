"""`temporal_tls` and what temporal_client.connect.tls_config makes of it: plain when
unset, the PEM files read at connect, a client certificate only with its key, and the
settings as the environment gives them (tests/integration/test_temporal_tls.py connects
for real)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pydantic import ValidationError
from temporalio.service import TLSConfig

from domain.config import Settings, TemporalTls
from temporal_client.connect import tls_config


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AINB_* variable of the caller's shell leaks into the settings under test."""
    for name in list(os.environ):
        if name.upper().startswith("AINB_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.fixture()
def pem_files(tmp_path: Path) -> dict[str, Path]:
    files = {}
    for name in ("ca", "cert", "key"):
        path = tmp_path / f"{name}.pem"
        path.write_bytes(f"-----BEGIN {name.upper()}-----\n{name}\n".encode())
        files[name] = path
    return files


def test_unset_is_plain(clean_env: pytest.MonkeyPatch) -> None:
    settings = Settings()
    assert settings.temporal_tls is None
    assert tls_config(settings) is False


def test_the_files_are_read(pem_files: dict[str, Path]) -> None:
    settings = Settings(
        temporal_tls=TemporalTls(
            server_ca_file=pem_files["ca"],
            client_cert_file=pem_files["cert"],
            client_key_file=pem_files["key"],
            server_name="temporal.example.com",
        )
    )
    tls = tls_config(settings)
    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert == pem_files["ca"].read_bytes()
    assert tls.client_cert == pem_files["cert"].read_bytes()
    assert tls.client_private_key == pem_files["key"].read_bytes()
    assert tls.domain == "temporal.example.com"


def test_the_files_are_read_at_connect_not_at_load(pem_files: dict[str, Path]) -> None:
    # A rotated certificate is picked up by the next connect, without new settings.
    settings = Settings(temporal_tls=TemporalTls(server_ca_file=pem_files["ca"]))
    pem_files["ca"].write_bytes(b"rotated")
    tls = tls_config(settings)
    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert == b"rotated"


def test_an_empty_block_is_tls_with_the_system_roots() -> None:
    tls = tls_config(Settings(temporal_tls=TemporalTls()))
    assert isinstance(tls, TLSConfig)
    assert tls.server_root_ca_cert is None
    assert tls.client_cert is None and tls.client_private_key is None
    assert tls.domain is None


def test_a_missing_file_fails_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "ca.pem"
    settings = Settings(temporal_tls=TemporalTls(server_ca_file=missing))
    with pytest.raises(FileNotFoundError, match="nowhere"):
        tls_config(settings)


def test_a_client_certificate_needs_its_key(pem_files: dict[str, Path]) -> None:
    with pytest.raises(ValidationError) as err:
        TemporalTls(client_cert_file=pem_files["cert"])
    assert "client_key_file" in str(err.value)


def test_a_client_key_needs_its_certificate(pem_files: dict[str, Path]) -> None:
    with pytest.raises(ValidationError) as err:
        TemporalTls(client_key_file=pem_files["key"])
    assert "client_cert_file" in str(err.value)


def test_nested_environment_variables(
    clean_env: pytest.MonkeyPatch, pem_files: dict[str, Path]
) -> None:
    clean_env.setenv("AINB_TEMPORAL_TLS__SERVER_CA_FILE", str(pem_files["ca"]))
    clean_env.setenv("AINB_TEMPORAL_TLS__CLIENT_CERT_FILE", str(pem_files["cert"]))
    clean_env.setenv("AINB_TEMPORAL_TLS__CLIENT_KEY_FILE", str(pem_files["key"]))
    clean_env.setenv("AINB_TEMPORAL_TLS__SERVER_NAME", "temporal.example.com")
    assert Settings.load().temporal_tls == TemporalTls(
        server_ca_file=pem_files["ca"],
        client_cert_file=pem_files["cert"],
        client_key_file=pem_files["key"],
        server_name="temporal.example.com",
    )


def test_the_config_file(
    clean_env: pytest.MonkeyPatch, pem_files: dict[str, Path], tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    block = {"server_ca_file": str(pem_files["ca"]), "server_name": "temporal.example.com"}
    config.write_text(json.dumps({"temporal_tls": block}))
    clean_env.setenv("AINB_CONFIG", str(config))
    assert Settings.load().temporal_tls == TemporalTls(**block)
