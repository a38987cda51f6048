"""Who may do what: roles, actions, label selectors and the API token format.

Pure rules, no I/O: the API (api/auth.py) resolves a bearer token to a `Principal` and
asks `refusal()` whether it may take an action in a project; the notebook's labels are
checked against the principal's selector with `reaches()`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from enum import StrEnum

from pydantic import BaseModel, Field


class Role(StrEnum):
    READ = "read"
    OPERATOR = "operator"
    # The operator configuration's tokens (`admin_tokens`): every project, plus the fleet.
    ADMIN = "admin"


_RANK = {Role.READ: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


class Action(StrEnum):
    # read
    LIST = "list"
    GET = "get"
    USAGE = "usage"
    LOGS = "logs"
    AUDIT = "audit"
    # operator
    CREATE = "create"
    START = "start"
    STOP = "stop"
    DELETE = "delete"
    PATCH = "patch"
    LABEL = "label"
    DATASYNC = "datasync"
    ROTATE_TOKEN = "rotate_token"
    OPEN_EDITOR = "open_editor"
    MANAGE_TOKENS = "manage_tokens"
    # administrator
    HOSTS = "hosts"
    # any valid token
    CAPABILITIES = "capabilities"


READ_ACTIONS = frozenset({Action.LIST, Action.GET, Action.USAGE, Action.LOGS, Action.AUDIT})
OPERATOR_ACTIONS = frozenset(
    {
        Action.CREATE,
        Action.START,
        Action.STOP,
        Action.DELETE,
        Action.PATCH,
        Action.LABEL,
        Action.DATASYNC,
        Action.ROTATE_TOKEN,
        Action.OPEN_EDITOR,
        Action.MANAGE_TOKENS,
    }
)
# What changes something: recorded in the audit log, refused from another origin.
STATE_CHANGING = OPERATOR_ACTIONS - {Action.OPEN_EDITOR}


class Actor(BaseModel):
    """Who asked for a command, as the audit log and `status.last_command_by` name it:
    the token's id and name, never its secret."""

    token_id: str
    name: str = ""
    role: Role


class Principal(BaseModel):
    """A valid token's rights."""

    token_id: str
    name: str = ""
    role: Role
    # None for an administrator: every project.
    project: str | None = None
    # Only notebooks whose labels include every pair; empty: every notebook of the project.
    selector: dict[str, str] = Field(default_factory=dict)

    @property
    def actor(self) -> Actor:
        return Actor(token_id=self.token_id, name=self.name, role=self.role)


def refusal(principal: Principal, action: Action, project: str | None) -> str | None:
    """Why `principal` may not take `action` in `project` (None: it may). A 403's message."""
    if principal.role is Role.ADMIN:
        return None
    if action is Action.CAPABILITIES:
        return None
    if action is Action.HOSTS:
        return "the fleet (/v1/hosts) is for administrator tokens only"
    if project is None or principal.project != project:
        return f"this token is for project {principal.project}, not {project}"
    if action in READ_ACTIONS:
        if action is Action.AUDIT and principal.selector:
            return "a token limited by a label selector cannot read the project's audit log"
        return None
    if action is Action.OPEN_EDITOR:
        return None  # a read token read-only, where the editor can be (the gateway says)
    if principal.role is Role.READ:
        return f"a read token may not {action.value.replace('_', ' ')}: it needs role operator"
    if action is Action.MANAGE_TOKENS and principal.selector:
        return "a token limited by a label selector cannot manage the project's tokens"
    return None


def reaches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def selector_problem(selector: dict[str, str], labels: dict[str, str]) -> str | None:
    """Why labels a notebook would get leave the token's reach (a create, a relabel)."""
    missing = [f"{k}={v}" for k, v in sorted(selector.items()) if labels.get(k) != v]
    if not missing:
        return None
    return f"this token reaches only notebooks labelled {', '.join(missing)}: keep them"


def may_grant(creator: Principal, role: Role, selector: dict[str, str]) -> str | None:
    """A token may create tokens with at most its own rights (why not, or None)."""
    if role is Role.ADMIN:
        return "administrator tokens come from the operator's configuration, not the API"
    if _RANK[role] > _RANK[creator.role]:
        return f"a {creator.role.value} token cannot create a {role.value} token"
    if problem := selector_problem(creator.selector, selector):
        return problem
    return None


def parse_selector(text: str) -> dict[str, str]:
    """`team=vision,env=dev` -> {"team": "vision", "env": "dev"}; ValueError naming the bad part."""
    out: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"label selector: {part!r} must look like key=value")
        out[key.strip()] = value.strip()
    return out


# ---------------------------------------------------------------- token format

TOKEN_PREFIX = "ainb_"
_TOKEN = re.compile(r"^ainb_([0-9a-f]{12})_([A-Za-z0-9_-]{32,64})$")


def new_token() -> tuple[str, str, str]:
    """(id, the token to show once, the hash to store). The id is public (logs, audit);
    the secret is 256 random bits, so a plain SHA-256 is as strong as a slow hash."""
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return token_id, f"{TOKEN_PREFIX}{token_id}_{secret}", secret_hash(secret)


def new_admin_token() -> str:
    """An administrator token for the operator's configuration (the embedded stack's)."""
    return f"{TOKEN_PREFIX}admin_{secrets.token_urlsafe(32)}"


def split_token(token: str) -> tuple[str, str] | None:
    """(id, secret) of a token in our format, else None."""
    match = _TOKEN.match(token)
    return (match.group(1), match.group(2)) if match else None


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def same_secret(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(secret_hash(secret).encode(), stored_hash.encode())
