"""Command-line words into request bodies: durations, key=value pairs, frameworks, labels,
token label selectors and names.

Only the shape is checked here; what the values may be (names, flavors, volumes) is the
API's to say, so the CLI never disagrees with it.
"""

from __future__ import annotations

import re
import secrets
from datetime import UTC, datetime

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+)([smhdw])")


def parse_duration(text: str) -> int:
    """Seconds from ``3600``, ``30m``, ``2h``, ``7d`` or ``1h30m``."""
    text = text.strip().lower()
    if text.isdigit():
        return int(text)
    pos, total = 0, 0
    for match in _DURATION.finditer(text):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not text or pos != len(text):
        raise ValueError(f"{text!r} is not a duration: use seconds or e.g. 30m, 2h, 7d, 1h30m")
    return total


def format_duration(seconds: int) -> str:
    """The shortest exact form of parse_duration's input: 604800 -> 7d, 5400 -> 1h30m."""
    if seconds <= 0:
        return f"{seconds}s"
    out = ""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out += f"{seconds // size}{unit}"
            seconds %= size
    return out


def parse_pair(text: str, what: str = "value") -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"{what} {text!r} must look like KEY=VALUE")
    return key, value


def parse_selector(text: str) -> dict[str, str]:
    """``team=nlp,env=dev``: the labels a token's notebooks must all have."""
    selector: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if part:
            key, value = parse_pair(part, "label selector part")
            selector[key.strip()] = value.strip()
    if not selector:
        raise ValueError(f"label selector {text!r} must look like KEY=VALUE[,KEY=VALUE...]")
    return selector


def default_token_name(now: datetime | None = None) -> str:
    # The API's name pattern has no ':'; the time tells two tokens of a day apart.
    return f"cli-{(now or datetime.now(UTC)).astimezone(UTC):%Y%m%d-%H%M%S}"


def parse_framework(text: str) -> dict[str, str]:
    """``python`` or ``python:3.11``: without a version the API picks the default one."""
    name, _, version = text.partition(":")
    if not name:
        raise ValueError(f"framework {text!r} must look like NAME or NAME:VERSION")
    return {"id": name, "version": version} if version else {"id": name}


def apply_label_edits(current: dict[str, str], edits: list[str]) -> dict[str, str]:
    """``key=value`` sets, ``key-`` removes (as kubectl does); the API replaces the whole
    map, so the edits are applied to the labels the notebook has now."""
    labels = dict(current)
    for edit in edits:
        if "=" in edit:
            key, value = parse_pair(edit, "label")
            labels[key] = value
        elif edit.endswith("-") and len(edit) > 1:
            labels.pop(edit[:-1], None)
        else:
            raise ValueError(f"label edit {edit!r} must be KEY=VALUE to set or KEY- to remove")
    return labels


def check_label_edit(edit: str) -> str:
    apply_label_edits({}, [edit])
    return edit


def default_name(framework_id: str) -> str:
    # Names need not be unique (the id is); a suffix still tells two notebooks apart in `ls`.
    return f"{framework_id}-{secrets.token_hex(3)}"[:63]


def notebook_body(
    *,
    framework: dict[str, str],
    editor: str | None,
    name: str | None,
    flavor: str,
    kind: str,
    units: int,
    volumes: list[str] | None = None,
    env: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    unsecure_http: bool = False,
    timeout: int | None = None,
    restart_on_timeout: bool = False,
) -> dict:
    """The JSON of POST /v1/projects/{project}/notebooks (see domain/spec.py), from
    values already parsed (parse_framework, parse_pair, parse_duration)."""
    body: dict = {
        "name": name or default_name(framework["id"]),
        "framework": framework,
        "resources": {"flavor": flavor, kind: units},
    }
    if editor:
        body["editor"] = editor
    if volumes:
        body["volumes"] = list(volumes)  # the API parses the string form itself
    if env:
        body["env_vars"] = dict(env)
    if labels:
        body["labels"] = dict(labels)
    if unsecure_http:
        body["unsecure_http"] = True
    if timeout is not None:
        body["timeout"] = timeout
    if restart_on_timeout:
        body["timeout_auto_restart"] = True
    return body
