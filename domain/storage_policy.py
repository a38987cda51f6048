"""Which volumes a project may mount: the storage aliases' rules, as a pure function.

The API applies it at create (a 403 naming the volume, alias, bucket and rule) and the
host activities that pull and push a volume apply it again, with the host's settings, so
a volume that reached a workflow some other way (or before a rule was tightened) is still
refused where the data would move.

Rules, in order (the first that refuses wins):

1. ``platform-bucket``: the platform's workspace bucket (``workspace_bucket``) is never
   mountable, through any alias, whatever the alias's rules say. This covers the platform
   alias and every alias on the same endpoint; it is refused on other endpoints too,
   because two endpoint strings cannot reliably be told apart (a DNS name and an address
   for one server, AWS's regional endpoints over one global bucket namespace).
2. ``alias``: the alias is not configured.
3. ``projects``: the alias's ``projects`` patterns do not match the project.
4. ``buckets``: the alias's ``buckets`` patterns (``{project}`` substituted) do not match.
5. ``prefix``: the volume's prefix is not under the alias's ``prefix`` template.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from domain.config import StorageAlias
    from domain.spec import Volume

PLATFORM_BUCKET = "platform-bucket"
UNKNOWN_ALIAS = "alias"
PROJECTS = "projects"
BUCKETS = "buckets"
PREFIX = "prefix"


@dataclass(frozen=True)
class Refusal:
    """Why a volume may not be mounted: ``rule`` is one of the names above."""

    alias: str
    bucket: str
    prefix: str
    rule: str
    message: str

    def details(self) -> dict[str, str]:
        return {
            "alias": self.alias,
            "bucket": self.bucket,
            "prefix": self.prefix,
            "rule": self.rule,
        }


class StorageSettings(Protocol):
    """What the policy reads from the settings (domain.config.Settings has it all)."""

    storage_aliases: Mapping[str, StorageAlias]
    platform_alias: str
    workspace_bucket: str


def volume_refusal(settings: StorageSettings, project: str, volume: Volume) -> Refusal | None:
    """None when ``project`` may mount ``volume``; else the first rule that refuses it."""
    return check_volume(
        settings.storage_aliases,
        settings.platform_alias,
        settings.workspace_bucket,
        project,
        volume.alias,
        volume.bucket,
        volume.prefix,
    )


def check_volume(
    aliases: Mapping[str, StorageAlias],
    platform_alias: str,
    workspace_bucket: str,
    project: str,
    alias: str,
    bucket: str,
    prefix: str,
) -> Refusal | None:
    prefix = prefix.strip("/")

    def refuse(rule: str, message: str) -> Refusal:
        return Refusal(alias=alias, bucket=bucket, prefix=prefix, rule=rule, message=message)

    if workspace_bucket and bucket.lower() == workspace_bucket.lower():
        where = (
            "the platform alias"
            if alias == platform_alias
            else "an alias on the platform's endpoint"
            if _same_endpoint(aliases, alias, platform_alias)
            else "any alias"
        )
        return refuse(
            PLATFORM_BUCKET,
            f"bucket {bucket!r} is the platform's workspace bucket (workspace_bucket): it is "
            f"never mountable through {where} (alias {alias!r})",
        )
    config = aliases.get(alias)
    if config is None:
        known = ", ".join(sorted(aliases)) or "none"
        return refuse(UNKNOWN_ALIAS, f"unknown storage alias {alias!r}; configured: {known}")
    if config.projects is not None and not any(
        fnmatchcase(project, pattern) for pattern in config.projects
    ):
        return refuse(
            PROJECTS,
            f"project {project!r} may not mount bucket {bucket!r} through storage alias "
            f"{alias!r}: the alias is not open to this project (storage_aliases.{alias}.projects)",
        )
    if config.buckets is not None:
        allowed = [pattern.replace("{project}", project) for pattern in config.buckets]
        if not any(fnmatchcase(bucket, pattern) for pattern in allowed):
            shown = ", ".join(allowed) or "none"
            return refuse(
                BUCKETS,
                f"project {project!r} may not mount bucket {bucket!r} through storage alias "
                f"{alias!r}: allowed buckets are {shown} (storage_aliases.{alias}.buckets)",
            )
    if config.prefix is not None:
        required = config.prefix.replace("{project}", project).strip("/")
        if prefix != required and not prefix.startswith(required + "/"):
            return refuse(
                PREFIX,
                f"project {project!r} may only mount prefixes under {required + '/'!r} of "
                f"bucket {bucket!r} through storage alias {alias!r}, not "
                f"{prefix or '(the whole bucket)'!r} (storage_aliases.{alias}.prefix)",
            )
    return None


def _same_endpoint(aliases: Mapping[str, StorageAlias], a: str, b: str) -> bool:
    first, second = aliases.get(a), aliases.get(b)
    if first is None or second is None:
        return False
    return normalize_endpoint(first.endpoint) == normalize_endpoint(second.endpoint)


def normalize_endpoint(endpoint: str) -> str:
    """``scheme://host:port`` in one spelling: lower case, default ports explicit, loopback
    names as one, no path or trailing slash."""
    from urllib.parse import urlsplit

    parts = urlsplit(endpoint.strip() if "://" in endpoint else f"https://{endpoint.strip()}")
    scheme = (parts.scheme or "https").lower()
    host = (parts.hostname or "").lower()
    if host in ("localhost", "::1") or host.startswith("127."):
        host = "127.0.0.1"
    try:
        port = parts.port
    except ValueError:
        port = None
    port = port or (80 if scheme == "http" else 443)
    return f"{scheme}://{host}:{port}"
