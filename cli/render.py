"""Output: tables and detail views for people, JSON and YAML for scripts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from cli import yamlout
from cli.spec import format_duration

FORMATS = ("table", "json", "yaml")


def structured(data: object, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    return yamlout.dump(data)


def table(headers: list[str], rows: list[list[str]], empty: str) -> str:
    if not rows:
        return empty + "\n"
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = []
    for row in [headers, *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines) + "\n"


def _when(value: str | None) -> datetime | None:
    if not value:
        return None
    at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def timestamp(value: str | None) -> str:
    at = _when(value)
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if at else "-"


def age(value: str | None, now: datetime | None = None) -> str:
    at = _when(value)
    if at is None:
        return "-"
    seconds = max(0, int(((now or datetime.now(UTC)) - at).total_seconds()))
    # Two units at most, as a glance at a list needs (1h5m, not 1h5m12s).
    text = format_duration(seconds)
    units = [i for i, ch in enumerate(text) if ch.isalpha()]
    return text[: units[1] + 1] if len(units) > 2 else text


def human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def sync_text(sync: dict) -> str:
    """One sync's numbers, e.g. ``running: 12/40 files, 3.1 MB/10.0 MB, 2 skipped``."""
    parts = []
    if sync.get("files_total") or sync.get("files_done"):
        parts.append(f"{sync.get('files_done', 0)}/{sync.get('files_total', 0)} files")
    if sync.get("bytes_total") or sync.get("bytes_done"):
        done, total = (
            human_bytes(sync.get("bytes_done", 0)),
            human_bytes(sync.get("bytes_total", 0)),
        )
        parts.append(f"{done}/{total}")
    for key in ("skipped", "seeded", "deleted", "failed"):
        if sync.get(f"files_{key}"):
            parts.append(f"{sync[f'files_{key}']} {key}")
    text = str(sync.get("state", ""))
    if parts:
        text += ": " + ", ".join(parts)
    if sync.get("message"):
        text += f" ({sync['message']})"
    return text


def labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "-"


def actor_text(actor: dict | None) -> str:
    """Who asked (a token's name and id, never its secret): ``ci (0123abcd4567, operator)``."""
    if not actor:
        return "-"
    name = actor.get("name") or "-"
    return f"{name} ({actor.get('token_id')}, {actor.get('role')})"


def _framework(spec: dict) -> str:
    fw = spec.get("framework", {})
    return f"{fw.get('id')}:{fw['version']}" if fw.get("version") else str(fw.get("id"))


def _resources(spec: dict) -> str:
    res = spec.get("resources", {})
    kind = "gpu" if res.get("gpu") else "cpu"
    return f"{res.get(kind)} {kind} x {res.get('flavor')}"


def _info(status: dict, width: int | None = None) -> str:
    info = status.get("info") or {}
    text = info.get("message") or ""
    if info.get("code"):
        text = f"{info['code']}: {text}" if text else info["code"]
    if width and len(text) > width:
        text = text[: width - 3] + "..."
    return text or "-"


def notebooks_table(notebooks: list[dict], project: str) -> str:
    rows = [
        [
            nb["id"],
            nb["spec"]["name"],
            nb["status"]["state"],
            _framework(nb["spec"]),
            nb["spec"].get("editor", "-"),
            _resources(nb["spec"]),
            labels_text(nb["spec"].get("labels", {})),
            age(nb.get("created_at")),
            _info(nb["status"], width=60),
        ]
        for nb in notebooks
    ]
    headers = ["ID", "NAME", "STATE", "FRAMEWORK", "EDITOR", "RESOURCES", "LABELS", "AGE", "INFO"]
    return table(headers, rows, empty=f"no notebooks in project {project}")


def notebook_detail(nb: dict) -> str:
    spec, status = nb["spec"], nb["status"]
    timeout = format_duration(int(spec.get("timeout", 0)))
    if spec.get("timeout_auto_restart"):
        timeout += ", restarts on timeout"
    pairs = [
        ("id", nb["id"]),
        ("name", spec["name"]),
        ("project", nb["project"]),
        ("state", status["state"]),
        ("info", _info(status)),
        ("url", status.get("url") or "-"),
        ("host", status.get("host") or "-"),
        ("framework", f"{_framework(spec)} ({nb.get('image', '-')})"),
        ("editor", spec.get("editor", "-")),
        ("resources", _resources(spec)),
        ("labels", labels_text(spec.get("labels", {}))),
        ("last command by", actor_text(status.get("last_command_by"))),
        # Values can be secrets: show which variables are set, not what they hold.
        ("env", ",".join(sorted(spec.get("env_vars", {}))) or "-"),
        ("timeout", timeout),
        ("auto stop at", timestamp(status.get("auto_stop_at"))),
        ("created", timestamp(nb.get("created_at"))),
        ("last started", timestamp(status.get("last_started_at"))),
        ("last stopped", timestamp(status.get("last_stopped_at"))),
        (
            "billed minutes",
            f"{status.get('billed_minutes_current', 0)} this run, "
            f"{status.get('billed_minutes_total', 0)} in all",
        ),
    ]
    width = max(len(k) for k, _ in pairs) + 1
    lines = [f"{(k + ':').ljust(width)}  {v}" for k, v in pairs]
    volumes = status.get("volumes") or []
    if volumes:
        lines.append("volumes:")
        for v in volumes:
            source = f"{v['bucket']}@{v['alias']}" + (f"/{v['prefix']}" if v.get("prefix") else "")
            last = v.get("last_sync")
            sync = f"  last sync {last['direction']} {sync_text(last)}" if last else ""
            lines.append(f"  {v['mount_path']}  {source}  {v['permission']}{sync}")
    ws = status.get("workspace")
    if ws:
        saved = f"saved {timestamp(ws.get('last_saved_at'))}" if ws.get("saved") else "never saved"
        last = ws.get("last_sync")
        sync = f", last sync {last['direction']} {sync_text(last)}" if last else ""
        lines.append(f"{'workspace:'.ljust(width)}  {ws['bucket']}/{ws['prefix']}  {saved}{sync}")
    syncs = status.get("datasyncs") or []
    if syncs:
        lines.append("datasyncs:")
        for job in syncs:
            target = job.get("volume") or "all"
            lines.append(f"  {job['id']}  {job['direction']} {target}  {sync_text(job)}")
    return "\n".join(lines) + "\n"


def notebook_usage(usage: dict) -> str:
    periods = list(usage.get("periods") or [])
    if usage.get("current"):
        periods.append({**usage["current"], "ended_at": None, "_current": True})
    rows = [
        [
            str(p["period"]),
            p["flavor"],
            f"{p['quantity']} {p['kind']}",
            timestamp(p.get("started_at")),
            "running" if p.get("_current") else timestamp(p.get("ended_at")),
            str(p["minutes"]),
        ]
        for p in periods
    ]
    out = table(
        ["PERIOD", "FLAVOR", "UNITS", "STARTED", "ENDED", "MINUTES"],
        rows,
        empty=f"no usage recorded for notebook {usage.get('notebook_id')}",
    )
    total = f"total billed minutes: {usage.get('total_minutes', 0)}"
    if usage.get("current"):
        # The ledger records a running period at checkpoints: say what the total leaves out.
        total += f" recorded, the running period {usage['current']['minutes']} so far"
    return out + total + "\n"


def project_usage(usage: dict) -> str:
    rows = [
        [r["notebook_id"], r["flavor"], r["kind"], str(r["minutes"]), str(r["unit_minutes"])]
        for r in usage.get("by_notebook") or []
    ]
    out = f"project {usage.get('project')}, {timestamp(usage.get('start'))} to {timestamp(usage.get('end'))}\n"
    out += table(
        ["NOTEBOOK", "FLAVOR", "KIND", "MINUTES", "UNIT-MINUTES"], rows, empty="no usage recorded"
    )
    return out + f"total billed minutes: {usage.get('total_minutes', 0)}\n"


def frameworks_table(frameworks: list[dict]) -> str:
    rows = [
        [
            fw["id"],
            v["version"] + (" (default)" if v.get("default") else ""),
            ",".join(v.get("editors", [])),
            ",".join(v.get("images", {}).values()),
            fw.get("description") or "-",
        ]
        for fw in frameworks
        for v in fw.get("versions", [])
    ]
    return table(
        ["FRAMEWORK", "VERSION", "EDITORS", "IMAGES", "DESCRIPTION"], rows, empty="no frameworks"
    )


def editors_table(editors: list[dict]) -> str:
    rows = [[e["id"], ",".join(e.get("frameworks", []))] for e in editors]
    return table(["EDITOR", "FRAMEWORKS"], rows, empty="no editors")


def flavors_table(flavors: list[dict]) -> str:
    rows = [
        [
            f["name"],
            f["kind"],
            f"{f['cpu_per_unit']:g}",
            f"{f['memory_gib_per_unit']:g}",
            f.get("gpu_model") or "-",
            str(f["max_units"]),
            str(f["free_units"]),
            str(f["queued"]),
            f.get("description") or "-",
        ]
        for f in flavors
    ]
    headers = [
        "FLAVOR",
        "KIND",
        "CPU/UNIT",
        "GIB/UNIT",
        "GPU",
        "MAX",
        "FREE",
        "QUEUED",
        "DESCRIPTION",
    ]
    return table(headers, rows, empty="no flavors")


def token_detail(token: dict) -> str:
    pairs = [
        ("id", token["id"]),
        ("name", token["name"]),
        ("project", token["project"]),
        ("role", token["role"]),
        ("label selector", labels_text(token.get("label_selector") or {})),
        ("state", token["state"]),
        ("created", f"{timestamp(token.get('created_at'))} by {token.get('created_by') or '-'}"),
        ("expires", timestamp(token.get("expires_at"))),
        ("last used", _last_used(token)),
    ]
    if token.get("revoked_at"):
        pairs.append(("revoked", timestamp(token["revoked_at"])))
    width = max(len(k) for k, _ in pairs) + 1
    return "".join(f"{(k + ':').ljust(width)}  {v}\n" for k, v in pairs)


def _last_used(token: dict) -> str:
    return timestamp(token["last_used_at"]) if token.get("last_used_at") else "never"


def issued_token(token: dict) -> str:
    """A new token: its view, then the secret, set apart, with what to do with it."""
    return (
        token_detail(token)
        + f"\ntoken:\n\n    {token['token']}\n\n"
        + "Keep it now: it will not be shown again (the API stores only its hash).\n"
        + 'Use it with --token, AINB_TOKEN, or token = "..." in the ainb config file.\n'
    )


def tokens_table(tokens: list[dict], project: str) -> str:
    rows = [
        [
            t["id"],
            t["name"],
            t["role"],
            labels_text(t.get("label_selector") or {}),
            t["state"],
            timestamp(t.get("expires_at")),
            _last_used(t),
        ]
        for t in tokens
    ]
    headers = ["ID", "NAME", "ROLE", "SELECTOR", "STATE", "EXPIRES", "LAST USED"]
    return table(headers, rows, empty=f"no tokens in project {project}")


def audit_table(entries: list[dict], project: str) -> str:
    rows = [
        [
            timestamp(e.get("at")),
            e["action"],
            e.get("notebook_id") or "-",
            f"{e.get('token_name') or '-'} ({e.get('token_id')})",
            str(e["status"]),
            _cut(e.get("detail") or "-", 60),
        ]
        for e in entries
    ]
    headers = ["AT", "ACTION", "NOTEBOOK", "TOKEN", "STATUS", "DETAIL"]
    return table(headers, rows, empty=f"no audit entries in project {project} for that time")


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())  # one line per entry
    return text if len(text) <= width else text[: width - 3] + "..."
