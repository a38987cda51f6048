"""The API's refusals of storage a project may not mount (403) and of reserved environment
(422), on the real stack: Temporal dev server, SeaweedFS, the control worker, the API, and a
simulated host agent (no containers are needed to refuse a spec, so no Docker either)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from tests.integration.conftest import Notebooks
from worker.stack import Ports, Stack

BASE = {"name": "nb", "framework": {"id": "python"}, "resources": {"flavor": "ai1-1-cpu", "cpu": 1}}


@pytest.fixture(scope="module")
def authz_stack(tmp_path_factory) -> Iterator[Stack]:
    ports = Ports.random()
    same_s3 = f"http://127.0.0.1:{ports.s3}"
    s = Stack(
        tmp_path_factory.mktemp("authz"),
        ports,
        runtime="sim",
        extra_env={"AINB_WORKSPACE_CHECKPOINT_S": "0"},
        config_overrides={
            "storage_aliases": {
                # The stack's own S3 again, under rules: the platform alias's keys, so only
                # the rules keep a project to its own buckets and prefixes.
                "team": {
                    "endpoint": same_s3,
                    "access_key": "placeholder",
                    "secret_key": "placeholder",
                    "projects": ["it-*"],
                    "buckets": ["{project}-*", "shared-data"],
                    "prefix": "projects/{project}/",
                },
                "closed": {
                    "endpoint": same_s3,
                    "access_key": "placeholder",
                    "secret_key": "placeholder",
                    "projects": ["nobody"],
                },
            },
        },
    )
    # The rule-bound aliases use the stack's real credentials (known once it made them).
    for alias in ("team", "closed"):
        s.config_overrides["storage_aliases"][alias].update(
            access_key=s.secrets["s3_access_key"], secret_key=s.secrets["s3_secret_key"]
        )
    try:
        # Refusals need no host: the host agent starts in the one test that runs a notebook.
        s.write_config()
        s.start_temporal()
        s.start_s3()
        s.start_control_worker()
        s.start_api()
        yield s
    finally:
        s.stop()


@pytest.fixture(scope="module")
def authz(authz_stack: Stack, project: str) -> Iterator[Notebooks]:
    with authz_stack.api_client(timeout=60) as client:
        yield Notebooks(client, project, None)  # type: ignore[arg-type]


def _post(nbs: Notebooks, **changes) -> httpx.Response:
    return nbs.api.post(nbs.base, json={**BASE, **changes})


@pytest.mark.parametrize(
    ("volume", "alias", "bucket", "rule"),
    [
        ("ainb-workspaces@local:/workspace/w", "local", "ainb-workspaces", "platform-bucket"),
        (
            "ainb-workspaces@local/projects:/workspace/w:ro",
            "local",
            "ainb-workspaces",
            "platform-bucket",
        ),
        # another alias on the platform's endpoint, whose rules would let the name through
        (
            "ainb-workspaces@team/projects/x:/workspace/w",
            "team",
            "ainb-workspaces",
            "platform-bucket",
        ),
        ("someone-else@team/projects/{project}:/workspace/w", "team", "someone-else", "buckets"),
        ("{project}-data@team/projects/other:/workspace/w", "team", "{project}-data", "prefix"),
        ("{project}-data@team:/workspace/w:rw", "team", "{project}-data", "prefix"),
        ("any-bucket@closed:/workspace/w", "closed", "any-bucket", "projects"),
    ],
)
def test_storage_outside_the_project_is_403_naming_alias_bucket_and_rule(
    authz: Notebooks, project: str, volume: str, alias: str, bucket: str, rule: str
) -> None:
    bucket = bucket.replace("{project}", project)
    r = _post(authz, volumes=["my-data@local:/workspace/ok", volume.replace("{project}", project)])
    assert r.status_code == 403, r.text
    body = r.json()
    assert body["field"] == "volumes[1]", body
    assert (body["alias"], body["bucket"], body["rule"]) == (alias, bucket, rule), body
    assert f"rule {rule}" in body["error"] and bucket in body["error"], body
    assert body["errors"][0]["field"] == "volumes[1]" and body["errors"][0]["rule"] == rule


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"HOME": "/workspace"}, "HOME"),
        ({"OK": "1", "LD_PRELOAD": "/workspace/evil.so"}, "LD_PRELOAD"),
        ({"NVIDIA_VISIBLE_DEVICES": "all"}, "NVIDIA_VISIBLE_DEVICES"),
        ({"CUDA_VISIBLE_DEVICES": "0,1"}, "CUDA_VISIBLE_DEVICES"),
        ({"JUPYTER_TOKEN": "mine"}, "JUPYTER_TOKEN"),
        ({"HASHED_PASSWORD": "x"}, "HASHED_PASSWORD"),
        ({"AINB_EDITOR_HOST": "0.0.0.0"}, "AINB_EDITOR_HOST"),  # refused by the model itself
    ],
)
def test_reserved_environment_is_422_naming_the_variable(
    authz: Notebooks, env: dict, variable: str
) -> None:
    r = _post(authz, env_vars=env)
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["field"] == "env_vars", body
    assert variable in body["error"] and "reserved" in body["error"], body


def test_environment_bounds_are_422(authz: Notebooks) -> None:
    r = _post(authz, env_vars={f"V{i}": "x" for i in range(65)})
    assert r.status_code == 422 and "at most 64 variables" in r.json()["error"], r.text
    r = _post(authz, env_vars={"BIG": "x" * 40000})
    assert r.status_code == 422 and "bytes" in r.json()["error"], r.text


def test_allowed_storage_and_environment_still_create_and_run(
    authz: Notebooks, authz_stack: Stack, project: str
) -> None:
    s3 = authz_stack.s3_client()
    for bucket in ("my-data", f"{project}-data"):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=f"{project}-data", Key=f"projects/{project}/in/a.txt", Body=b"a")
    volumes = [
        {"bucket": "my-data", "alias": "local", "prefix": "train", "mount_path": "/workspace/data"},
        f"{project}-data@team/projects/{project}/in:/workspace/in:rw",
    ]
    r = _post(authz, volumes=volumes, env_vars={"MY_SETTING": "1", "PYTHONPATH": "/workspace/src"})
    assert r.status_code == 201, r.text
    nb = r.json()
    try:
        authz_stack.start_host_agent()
        authz_stack.wait_for_hosts([authz_stack.host_name])
        authz.wait(nb["id"], "RUNNING", timeout=90)
        # PATCH cannot bring storage in: its only fields are the timeout's.
        r = authz.api.patch(
            f"{authz.base}/{nb['id']}",
            json={"timeout": 3600, "volumes": ["ainb-workspaces@local:/workspace/w"]},
        )
        assert r.status_code in (200, 422), r.text
        got = authz.get(nb["id"]).json()
        assert [v["bucket"] for v in got["spec"]["volumes"]] == ["my-data", f"{project}-data"]
    finally:
        authz.delete(nb["id"])
        authz.wait(nb["id"], "DELETED", timeout=90)
