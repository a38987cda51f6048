"""Operator configuration shared by the workers and the API.

Read from ``AINB_*`` environment variables and, when ``AINB_CONFIG`` names one, a JSON
file (the embedded stack writes one). Secrets live here and only here: never in workflow
inputs. Workflows never import this module.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from domain.fleet import FlavorSpec, Quotas
from domain.messages import FleetInput, Tuning


class StorageAlias(BaseModel):
    endpoint: str
    region: str = "us-east-1"
    access_key: SecretStr
    secret_key: SecretStr
    # Who may mount what through this alias (domain/storage_policy.py applies them at
    # create and again in the host activities that pull and push a volume). Unset: no
    # restriction, as before these existed. Whatever they say, the platform bucket
    # (workspace_bucket) is never mountable through any alias.
    # Projects allowed to use the alias: names or shell-style patterns ("team-*").
    # None: every project; []: none.
    projects: list[str] | None = None
    # Buckets a volume may name: names or shell-style patterns, "{project}" standing for
    # the notebook's project ("{project}-*", "shared-data"). None: any bucket.
    buckets: list[str] | None = None
    # Every mounted prefix must lie under this one, matched on whole path segments, with
    # "{project}" substituted: "projects/{project}/" lets project demo mount
    # "projects/demo" and "projects/demo/train", not "projects/demo2" nor "". None: any.
    prefix: str | None = None

    @field_validator("projects", "buckets")
    @classmethod
    def _patterns(cls, value: list[str] | None) -> list[str] | None:
        for pattern in value or []:
            if not pattern or not pattern.strip():
                raise ValueError("patterns must not be empty")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix_template(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.strip("/").split("/")
        if any(part in ("", ".", "..") for part in parts):
            raise ValueError(
                f"prefix {value!r} must be a plain key prefix such as 'projects/{{project}}/'"
            )
        return value


class TemporalTls(BaseModel):
    """Files of PEM text; the paths are read by each process at connect."""

    # The CA that signed the server's certificate (unset: the system's roots).
    server_ca_file: Path | None = None
    # A client certificate and key, for servers that want mutual TLS.
    client_cert_file: Path | None = None
    # validate_default: a certificate given without its key is refused, not ignored.
    client_key_file: Path | None = Field(default=None, validate_default=True)
    # The name the server's certificate carries, if not the host of temporal_address.
    server_name: str | None = None

    @field_validator("client_key_file")
    @classmethod
    def _pair(cls, value: Path | None, info) -> Path | None:
        if (value is None) != (info.data.get("client_cert_file") is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return value


class Flavor(BaseModel):
    kind: Literal["cpu", "gpu"]
    description: str = ""
    cpu_per_unit: float = 1.0
    memory_gib_per_unit: float = 4.0
    gpu_model: str | None = None
    max_units: int = 12


class FrameworkVersion(BaseModel):
    # editor name -> image
    images: dict[str, str]


class FrameworkEntry(BaseModel):
    description: str = ""
    default_version: str
    versions: dict[str, FrameworkVersion]


JUPYTERLAB_IMAGE = "ainb/jupyterlab-python:3.11"
VSCODE_IMAGE = "ainb/vscode-python:3.11"
PYTORCH_IMAGES = {
    "jupyterlab": "ainb/pytorch-jupyterlab:2.13",
    "vscode": "ainb/pytorch-vscode:2.13",
}


def _default_frameworks() -> dict[str, FrameworkEntry]:
    return {
        "python": FrameworkEntry(
            description="Python 3.11 with JupyterLab or VS Code",
            default_version="3.11",
            versions={
                "3.11": FrameworkVersion(
                    images={"jupyterlab": JUPYTERLAB_IMAGE, "vscode": VSCODE_IMAGE}
                )
            },
        ),
        "pytorch": FrameworkEntry(
            description="PyTorch 2.13 (CPU build) with NumPy, Python 3.11",
            default_version="2.13",
            versions={"2.13": FrameworkVersion(images=dict(PYTORCH_IMAGES))},
        ),
    }


def _default_flavors() -> dict[str, Flavor]:
    return {
        "ai1-1-cpu": Flavor(kind="cpu", description="1 vCPU, 4 GiB per unit", max_units=12),
        "ai1-1-gpu": Flavor(
            kind="gpu",
            description="1 GPU, 8 vCPU, 45 GiB per unit",
            cpu_per_unit=8,
            memory_gib_per_unit=45,
            gpu_model="any",
            max_units=4,
        ),
    }


# The settings the API writes into each new notebook workflow's Tuning (Settings.tuning()).
# Their defaults are Tuning's: one source, whether the API sets them or a workflow input
# leaves them out. Tuning's other fields (launch_attempts, ready_timeout_s) are not
# settings: every workflow gets their defaults.
TUNED = (
    "heartbeat_timeout_s",
    "host_pickup_timeout_s",
    "start_sync_attempts",
    "stop_grace_s",
    "push_retry_max_interval_s",
    "checkpoint_s",
    "workspace_checkpoint_s",
    "max_history_events",
)


def _default(model: type[BaseModel], name: str):
    """The default of ``model``'s field ``name``, for a setting that fills it."""
    return model.model_fields[name].default


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AINB_", env_nested_delimiter="__")

    temporal_address: str = "127.0.0.1:7233"
    temporal_namespace: str = "default"

    data_dir: Path = Path(".ainb")
    # The host this agent serves (hosts join the fleet by registering; see worker/presence).
    host_name: str = "local"
    # Set when the processes of one installation do not share a data_dir (compose).
    installation: str = ""
    # Address at which the editors on this host are reachable by users.
    host_address: str = "127.0.0.1"
    # "sim": a simulated host (no containers; for fleet tests and benchmarks)
    runtime: Literal["auto", "docker", "local", "sim"] = "auto"
    # Port of this host agent's log endpoint (0: any free one; it is reported to the fleet).
    host_logs_port: int = 0
    # Port of this host agent's editor tunnel, through which the gateway reaches the editors
    # it runs (0: any free one; reported to the fleet).
    host_editor_port: int = 0
    # The Docker network notebook containers get: "none" (a namespace of their own with no
    # route anywhere; the editor is reached through a Unix socket), or the name of a network
    # the operator made for the notebooks' egress, from which no platform address is
    # reachable (see the README's security section).
    notebook_network: str = "none"
    # Host networking puts a notebook's code beside every platform port on the host. Refused
    # unless this is set; the host agent warns at every start while it is.
    unsafe_notebooks_share_host_network: bool = False
    # The unprivileged user the editors and everything they start run as (the images' user).
    editor_uid: int = 1000
    editor_gid: int = 1000

    # Read-only to its readers (domain.storage_policy.StorageSettings); a dict at run time.
    storage_aliases: Mapping[str, StorageAlias] = Field(default_factory=dict)
    platform_alias: str = "local"
    workspace_bucket: str = "ainb-workspaces"

    # Derives editor and host-agent tokens (domain/tokens.py). Empty is allowed here, so that
    # tools and tests can build Settings; every server process calls require_token_secret()
    # at start and refuses to run without one (the embedded stack generates it).
    token_secret: SecretStr = SecretStr("")
    # The API's address as people reach it.
    public_url: str = "http://127.0.0.1:8000"
    # Each notebook's own origin, `{id}` in its host (production: a wildcard DNS name such
    # as "https://{id}.nb.example.com"). Empty: public_url's host with "{id}." in front,
    # "localhost" for a loopback address ("http://{id}.localhost:8000").
    notebook_origin: str = ""
    # Administrator tokens: every project, the fleet (/v1/hosts), tokens of any project.
    # The embedded stack makes one on first start (<data dir>/admin-token).
    admin_tokens: list[SecretStr] = Field(default_factory=list)
    # Static project tokens (role operator) from before tokens were issued by the API
    # (`ainb token create`, kept hashed in the ledger's database); still honoured.
    api_tokens: dict[str, list[SecretStr]] = Field(default_factory=dict)
    # Lifetime of an issued token when none is asked for, and the longest one may ask for.
    token_default_expiry_s: int = 90 * 86400
    token_max_expiry_s: int = 366 * 86400
    # Host names (host or host:port) the API answers to besides public_url's: anything
    # else is refused (a DNS-rebinding page names its own host).
    allowed_hosts: list[str] = Field(default_factory=list)
    # Origins whose pages may call the API from a browser (CORS); empty: none, and any
    # state-changing request a page of another origin makes is refused.
    cors_origins: list[str] = Field(default_factory=list)
    # The API's access log. "changes": every write, refusal and error, and reads only at
    # debug level (as JupyterHub does: a status page polling every notebook would fill the
    # log and cost the API a sixth of its CPU); "all": every request. Writes are also in
    # the audit log.
    access_log: Literal["changes", "all"] = "changes"
    # TLS to Temporal (every client: API, control worker, host agents). Unset: plain, as
    # the embedded dev server on loopback wants.
    temporal_tls: TemporalTls | None = None

    frameworks: dict[str, FrameworkEntry] = Field(default_factory=_default_frameworks)
    flavors: dict[str, Flavor] = Field(default_factory=_default_flavors)

    # Where a worker (control worker, host agent) serves /metrics, host:port; unset: none.
    # The API serves its own on its port, for admin tokens and `metrics_token`.
    metrics_address: str | None = None
    # A bearer token that may read the API's /metrics and nothing else (a scraper's).
    metrics_token: SecretStr | None = None
    # The ledger's database (usage records, API tokens, the audit log): sqlite:///<path>
    # or postgresql://user:password@host:5432/db (shared by API replicas and control
    # workers on other machines). Unset: a SQLite file, ledger_path or data_dir/ledger.sqlite.
    ledger_url: SecretStr | None = None
    ledger_path: Path | None = None
    # Failpoint for crash tests: pause after a ledger write commits, before it is acknowledged.
    failpoint_after_ledger_write_s: float = 0.0
    # Range of notebook timeouts a user may ask for, in seconds.
    timeout_min_s: int = 600
    timeout_max_s: int = 30 * 24 * 3600

    # Timeouts the API writes into each new workflow (TUNED; defaults: domain.messages.Tuning).
    heartbeat_timeout_s: float = _default(Tuning, "heartbeat_timeout_s")
    host_pickup_timeout_s: float = _default(Tuning, "host_pickup_timeout_s")
    start_sync_attempts: int = _default(Tuning, "start_sync_attempts")
    stop_grace_s: float = _default(Tuning, "stop_grace_s")
    # A push that fails at stop is retried until it succeeds, at most this far apart.
    push_retry_max_interval_s: float = _default(Tuning, "push_retry_max_interval_s")
    checkpoint_s: float = _default(Tuning, "checkpoint_s")
    # Periodic workspace push while RUNNING (0: only at stop).
    workspace_checkpoint_s: float = _default(Tuning, "workspace_checkpoint_s")
    # Host-local copies of `cache` volumes unused for this long are evicted.
    volume_cache_ttl_s: float = 7 * 24 * 3600
    max_history_events: int = _default(Tuning, "max_history_events")
    # The fleet takes every heartbeat and grant: a longer history between continue-as-new.
    fleet_max_history_events: int = 10000

    # Quotas: per notebook (a 422 at create), per project at once (a 409 at create/start).
    notebook_max_gpus: int = 4
    notebook_max_cpus: int = 12
    project_max_gpus: int = _default(Quotas, "project_max_gpus")
    # Host liveness: agents prove they live this often; silent this long means down.
    host_heartbeat_s: float = 5.0
    host_down_after_s: float = _default(FleetInput, "host_down_after_s")
    # Agents remove containers not meant to run on them (and adopt the rest) this often.
    reconcile_interval_s: float = 60.0
    # This host's inventory; unset values are detected (CPUs, memory; GPUs via nvidia-smi).
    host_cpus: float | None = None
    host_memory_gib: float | None = None
    host_gpu_ids: list[str] | None = None
    host_gpu_model: str | None = None
    # Flavors this host runs; unset: every cpu flavor, and gpu flavors if it has GPUs.
    host_flavors: list[str] | None = None
    # Warm editors this host keeps started ahead, by image (JupyterLab images; Docker
    # runtime only): a notebook that fits one is ready in a fraction of a cold start.
    # Each idle slot holds its editor's memory (~100 MiB for JupyterLab) outside the
    # fleet's inventory (see the README's warm pool section).
    warm_pool: dict[str, int] = Field(default_factory=dict)

    @classmethod
    def load(cls) -> Settings:
        """Settings from the JSON file named by AINB_CONFIG, overridden by AINB_* variables."""
        path = os.environ.get("AINB_CONFIG")
        file_values = json.loads(Path(path).read_text()) if path else {}
        env_values = cls().model_dump(exclude_unset=True)
        return cls.model_validate({**file_values, **env_values})

    @property
    def notebook_origin_pattern(self) -> str:
        from domain.gateway import origin_pattern

        return origin_pattern(self.public_url, self.notebook_origin)

    @property
    def ledger_file(self) -> Path:
        return self.ledger_path or self.data_dir / "ledger.sqlite"

    @property
    def ledger(self) -> str:
        """The ledger's URL (with its password: for the ledger's engine only, never logged)."""
        if self.ledger_url is not None:
            return self.ledger_url.get_secret_value()
        return f"sqlite:///{self.ledger_file}"

    @property
    def installation_id(self) -> str:
        """Tells this platform's containers from another's on a shared engine: the same
        for every process of one installation (same Temporal, namespace and data)."""
        if self.installation:
            return self.installation
        key = f"{self.temporal_address}|{self.temporal_namespace}|{self.data_dir.resolve()}"
        return hashlib.sha256(key.encode()).hexdigest()[:16]

    def tuning(self) -> Tuning:
        """The timeouts a new notebook workflow applies (its input's ``tuning``)."""
        return Tuning(**{name: getattr(self, name) for name in TUNED})

    def fleet_input(self) -> FleetInput:
        """The fleet workflow's configuration: flavors, quotas, liveness timing."""
        return FleetInput(
            flavors={
                name: FlavorSpec(
                    name=name,
                    kind=f.kind,
                    cpu_per_unit=f.cpu_per_unit,
                    memory_gib_per_unit=f.memory_gib_per_unit,
                    gpu_model=f.gpu_model,
                )
                for name, f in self.flavors.items()
            },
            quotas=Quotas(project_max_gpus=self.project_max_gpus),
            host_down_after_s=self.host_down_after_s,
            max_history_events=self.fleet_max_history_events,
        )

    def storage(self, alias: str) -> StorageAlias:
        try:
            return self.storage_aliases[alias]
        except KeyError:
            known = ", ".join(sorted(self.storage_aliases)) or "none"
            raise KeyError(f"unknown storage alias {alias!r} (configured: {known})") from None

    @field_validator("ledger_url")
    @classmethod
    def _ledger_url(cls, value: SecretStr | None) -> SecretStr | None:
        # Checked at load: a typo fails the process at start, not at the first billed minute.
        if value is None:
            return None
        url = value.get_secret_value()
        scheme, sep, rest = url.partition("://")
        if scheme == "sqlite":
            if not rest.startswith("/") or len(rest) < 2:
                raise ValueError("ledger_url: expected sqlite:///<path>")
        elif scheme in ("postgresql", "postgres"):
            database = rest.partition("/")[2].partition("?")[0]
            if not database and "dbname=" not in rest:
                raise ValueError("ledger_url: a PostgreSQL URL must name its database")
        else:
            # The URL itself is not repeated: it may carry a password.
            raise ValueError(
                f"ledger_url: expected sqlite:///<path> or postgresql://..., got scheme {scheme!r}"
                if sep
                else "ledger_url: expected sqlite:///<path> or postgresql://..."
            )
        return value

    @field_validator("host_name")
    @classmethod
    def _host_name(cls, value: str) -> str:
        # It becomes a path component (data_dir/hosts/<host_name>/...) and a task queue name.
        if not _HOST_NAME.match(value):
            raise ValueError(
                f"host_name {value!r} must be 1-63 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it names the host's directory and task queue)"
            )
        return value

    def require_token_secret(self) -> None:
        """For servers (API, control worker, host agent) at start: without a secret every
        editor and agent token would be derivable by anyone. Raises SystemExit."""
        value = self.token_secret.get_secret_value().strip()
        if len(value) < MIN_TOKEN_SECRET_CHARS:
            problem = "is not set" if not value else "is too short"
            raise SystemExit(
                f"ainb: token_secret {problem}: it must be at least {MIN_TOKEN_SECRET_CHARS} "
                "random characters. Set AINB_TOKEN_SECRET or token_secret in the AINB_CONFIG "
                "file (for example: python -c 'import secrets; print(secrets.token_urlsafe(32))'); "
                "the embedded stack (ainb-stack) generates one in its data directory."
            )


# A host name: a path component and part of a task queue name, never '.', '..' or a '/'.
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
MIN_TOKEN_SECRET_CHARS = 16
