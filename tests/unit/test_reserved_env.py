"""The environment a spec may set (domain.spec.env_problem), the API's 422 naming the
variable, the ids that workflows and activities take in, and the server settings checks."""

from __future__ import annotations

import json
import os
import stat
import threading

import pytest
from pydantic import SecretStr, ValidationError

from api import catalog
from api.errors import ApiError
from domain.config import Settings
from domain.messages import (
    NotebookInput,
    NotebookRef,
    StopContainerInput,
    VolumeSyncInput,
)
from domain.spec import (
    MAX_ENV_BYTES,
    MAX_ENV_VARS,
    RESERVED_ENV_NAMES,
    NotebookSpec,
    env_problem,
    reserved_env_reason,
)
from worker.stack import Stack

NID = "0123456789abcdef" * 2


@pytest.mark.parametrize(
    "name",
    [
        "NVIDIA_VISIBLE_DEVICES",
        "NVIDIA_DRIVER_CAPABILITIES",
        "CUDA_VISIBLE_DEVICES",
        "JUPYTER_TOKEN",
        "JUPYTER_CONFIG_DIR",
        "PASSWORD",
        "HASHED_PASSWORD",
        "AINB_EDITOR_TOKEN",
        "ainb_editor_host",
        "HOME",
        "PATH",
        "path",
        "SHELL",
        "XDG_DATA_HOME",
        "EXTENSIONS_GALLERY",
        "VIRTUAL_ENV",
        "IPYTHONDIR",
        "LD_PRELOAD",
        "LD_LIBRARY_PATH",
        "PYTHONHOME",
        "NODE_OPTIONS",
        "VSCODE_PROXY_URI",
        "BASH_ENV",
        "GCONV_PATH",
    ],
)
def test_reserved_names_are_refused_naming_them(name: str) -> None:
    assert reserved_env_reason(name) is not None
    variable, message = env_problem({"OK": "1", name: "x"})
    assert variable == name and repr(name) in message and "reserved" in message


@pytest.mark.parametrize(
    "name", ["MY_VAR", "PYTHONPATH", "HF_HOME", "CUDA_LAUNCH_BLOCKING", "LANG", "HTTPS_PROXY"]
)
def test_ordinary_names_pass(name: str) -> None:
    assert env_problem({name: "value with spaces = and ünïcode"}) is None


def test_every_reserved_name_has_a_reason_and_is_upper_case() -> None:
    for name, reason in RESERVED_ENV_NAMES.items():
        assert name == name.upper() and reason


@pytest.mark.parametrize("name", ["1ABC", "A-B", "A B", "A=B", "", "É", "A\n"])
def test_invalid_names(name: str) -> None:
    variable, message = env_problem({name: "x"})
    assert variable == name and "not a valid environment variable name" in message


def test_values_without_nul() -> None:
    assert env_problem({"A": "x\x00y"}) == ("A", "value of 'A' must not contain NUL")
    assert env_problem({"A": "\ud800"}) == ("A", "value of 'A' must be valid Unicode text")


def test_count_and_size_are_bounded() -> None:
    assert env_problem({f"V{i}": "x" for i in range(MAX_ENV_VARS)}) is None
    variable, message = env_problem({f"V{i}": "x" for i in range(MAX_ENV_VARS + 1)})
    assert variable is None and f"at most {MAX_ENV_VARS}" in message
    # name + '=' + value + NUL per variable, in UTF-8 bytes
    fits = {"A": "x" * (MAX_ENV_BYTES - 3)}
    assert env_problem(fits) is None
    variable, message = env_problem({"A": "é" * (MAX_ENV_BYTES // 2)})
    assert variable is None and f"at most {MAX_ENV_BYTES} bytes" in message


def _spec(env: dict[str, str]) -> NotebookSpec:
    return NotebookSpec.model_validate(
        {
            "name": "nb",
            "framework": {"id": "python"},
            "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            "env_vars": env,
        }
    )


def test_create_is_422_naming_the_variable() -> None:
    with pytest.raises(ApiError) as caught:
        catalog.validate(Settings(), _spec({"LD_PRELOAD": "/workspace/x.so"}), "demo")
    err = caught.value
    assert err.status == 422 and err.field == "env_vars"
    assert "'LD_PRELOAD'" in err.message and err.details == {"variable": "LD_PRELOAD"}
    catalog.validate(Settings(), _spec({"MY_VAR": "1"}), "demo")


def test_a_stored_spec_with_a_newly_reserved_name_still_loads() -> None:
    # Workflow histories hold specs made before a name was reserved: they must replay.
    assert _spec({"HOME": "/x", "LD_PRELOAD": "y"}).env_vars["HOME"] == "/x"
    with pytest.raises(ValidationError, match="reserved"):
        _spec({"AINB_EDITOR_TOKEN": "x"})  # refused by the model, as it always was


# ---------------------------------------------------------------- ids in messages


@pytest.mark.parametrize(
    ("project", "notebook_id"),
    [("../etc", NID), ("Demo", NID), ("demo", "../" + NID[3:]), ("demo", NID.upper()), ("", NID)],
)
def test_ids_are_checked_where_workflows_and_activities_take_them(
    project: str, notebook_id: str
) -> None:
    with pytest.raises(ValidationError):
        NotebookRef(project=project, notebook_id=notebook_id)
    with pytest.raises(ValidationError):
        NotebookInput.model_validate(
            {
                "project": project,
                "notebook_id": notebook_id,
                "spec": _spec({}).model_dump(mode="json"),
                "image": "img",
                "workspace_bucket": "ws",
                "created_at": "2026-01-01T00:00:00Z",
            }
        )
    with pytest.raises(ValidationError):
        StopContainerInput.model_validate(
            {"ref": {"project": project, "notebook_id": notebook_id}, "grace_s": 1}
        )


def test_valid_ids_round_trip_unchanged() -> None:
    ref = NotebookRef(project="it-1a2b", notebook_id=NID)
    sync = VolumeSyncInput(
        ref=ref,
        index=0,
        volume={"bucket": "my-data", "alias": "local", "mount_path": "/workspace/d"},
    )
    again = VolumeSyncInput.model_validate_json(sync.model_dump_json())
    assert again == sync and again.ref.model_dump() == {"project": "it-1a2b", "notebook_id": NID}


# ---------------------------------------------------------------- settings of servers


@pytest.mark.parametrize("name", ["../x", "a/b", ".", "..", "", "-x", "x" * 64])
def test_host_names_that_could_leave_the_data_directory_are_refused(name: str) -> None:
    with pytest.raises(ValidationError, match="host_name"):
        Settings(host_name=name)


def test_host_names_in_use_pass() -> None:
    for name in ("local", "gpu-1", "sim_2", "host.example"):
        assert Settings(host_name=name).host_name == name


def test_servers_refuse_to_start_without_a_token_secret() -> None:
    for secret in ("", "   ", "short"):
        with pytest.raises(SystemExit, match="token_secret"):
            Settings(token_secret=SecretStr(secret)).require_token_secret()
    Settings(token_secret=SecretStr("x" * 32)).require_token_secret()


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_embedded_stack_keeps_its_secrets_private(tmp_path) -> None:
    data = tmp_path / "ainb"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    old_umask = os.umask(0o022)
    try:
        stack = Stack(data)
        stack.write_config()
    finally:
        os.umask(old_umask)
    assert _mode(data) == 0o700
    assert _mode(data / "secrets.json") == 0o600
    assert _mode(data / "config.json") == 0o600
    assert _mode(data / "admin-token") == 0o600
    assert len(stack.secrets["token_secret"]) >= 32
    config = json.loads((data / "config.json").read_text())
    assert config["token_secret"] == stack.secrets["token_secret"]
    assert config["admin_tokens"] == [stack.admin_token] and len(stack.admin_token) > 40
    Settings.model_validate(config).require_token_secret()
    # no temporary files left behind
    assert sorted(p.name for p in data.iterdir()) == [
        "admin-token", "config.json", "logs", "secrets.json"
    ]  # fmt: skip

    # a restart finds the same secrets; a file an older version left wide is narrowed
    os.chmod(data / "secrets.json", 0o644)
    again = Stack(data)
    assert again.secrets == stack.secrets and again.admin_token == stack.admin_token
    assert _mode(data / "secrets.json") == 0o600


def test_components_started_side_by_side_agree_on_one_set_of_secrets(tmp_path) -> None:
    data = tmp_path / "ainb"
    data.mkdir()
    found: list[dict] = []
    barrier = threading.Barrier(8)

    def start() -> None:
        barrier.wait()
        found.append(Stack(data).secrets)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and all(f == found[0] for f in found)
