"""The storage aliases' rules (domain/storage_policy.py) and the API's 403 that carries them."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api import catalog, errors
from api.errors import ApiError
from domain.config import Settings, StorageAlias
from domain.spec import NotebookSpec, Volume
from domain.storage_policy import (
    BUCKETS,
    PLATFORM_BUCKET,
    PREFIX,
    PROJECTS,
    UNKNOWN_ALIAS,
    normalize_endpoint,
    volume_refusal,
)

ENDPOINT = "http://127.0.0.1:8333"


def _alias(endpoint: str = ENDPOINT, **rules) -> StorageAlias:
    return StorageAlias(endpoint=endpoint, access_key="k", secret_key="s", **rules)


def _settings(**aliases: StorageAlias) -> Settings:
    return Settings(
        storage_aliases={"local": _alias(), **aliases},
        platform_alias="local",
        workspace_bucket="ainb-workspaces",
    )


def _volume(source: str) -> Volume:
    return Volume.model_validate(Volume.fields_from_string(f"{source}:/workspace/v"))


def _rule(settings: Settings, project: str, source: str) -> str | None:
    refusal = volume_refusal(settings, project, _volume(source))
    return refusal.rule if refusal else None


def test_the_embedded_default_lets_the_readme_examples_through() -> None:
    s = _settings()
    assert _rule(s, "demo", "my-data@local/train") is None
    assert _rule(s, "demo", "my-results@local") is None
    assert _rule(s, "other", "anything@local/x/y") is None


@pytest.mark.parametrize(
    "alias",
    [
        _alias(),  # the platform's endpoint, another alias
        _alias("http://localhost:8333/"),  # the same server spelled differently
        _alias("https://elsewhere.example"),  # another endpoint: refused by name all the same
        _alias(projects=["*"], buckets=["*"]),  # whatever the rules say
    ],
)
def test_the_platform_bucket_is_never_mountable(alias: StorageAlias) -> None:
    s = _settings(other=alias)
    for source in (
        "ainb-workspaces@local",
        "ainb-workspaces@local/projects/demo/notebooks",
        "ainb-workspaces@other",
        "ainb-workspaces@other/projects/demo",
    ):
        refusal = volume_refusal(s, "demo", _volume(source))
        assert refusal is not None and refusal.rule == PLATFORM_BUCKET, source
        assert "ainb-workspaces" in refusal.message and "workspace_bucket" in refusal.message


def test_the_platform_bucket_refusal_says_where() -> None:
    s = _settings(same=_alias("http://LOCALHOST:8333"), far=_alias("https://s3.example"))
    assert "the platform alias" in volume_refusal(s, "p", _volume("ainb-workspaces@local")).message
    assert "platform's endpoint" in volume_refusal(s, "p", _volume("ainb-workspaces@same")).message
    assert "any alias" in volume_refusal(s, "p", _volume("ainb-workspaces@far")).message


def test_projects_rule() -> None:
    s = _settings(team=_alias(projects=["vision", "nlp-*"]), closed=_alias(projects=[]))
    assert _rule(s, "vision", "data@team") is None
    assert _rule(s, "nlp-large", "data@team") is None
    assert _rule(s, "demo", "data@team") == PROJECTS
    assert _rule(s, "vision", "data@closed") == PROJECTS
    refusal = volume_refusal(s, "demo", _volume("data@team"))
    assert "'team'" in refusal.message and "'demo'" in refusal.message
    assert "vision" not in refusal.message  # other projects' names are not told


def test_buckets_rule_with_project_substitution() -> None:
    s = _settings(team=_alias(buckets=["{project}-*", "shared-data"]))
    assert _rule(s, "demo", "demo-train@team") is None
    assert _rule(s, "demo", "shared-data@team") is None
    assert _rule(s, "demo", "vision-train@team") == BUCKETS
    assert _rule(s, "demo", "demo@team") == BUCKETS  # "demo-*" needs the dash
    refusal = volume_refusal(s, "demo", _volume("vision-train@team"))
    assert refusal.bucket == "vision-train" and refusal.alias == "team"
    assert "demo-*" in refusal.message and "storage_aliases.team.buckets" in refusal.message


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("bkt@team/projects/demo", True),
        ("bkt@team/projects/demo/", True),
        ("bkt@team/projects/demo/train/x", True),
        ("bkt@team/projects/demo2", False),  # whole segments only
        ("bkt@team/projects/vision/train", False),
        ("bkt@team/projects", False),
        ("bkt@team", False),  # the whole bucket
    ],
)
def test_prefix_rule_matches_whole_segments(source: str, allowed: bool) -> None:
    s = _settings(team=_alias(prefix="projects/{project}/"))
    assert _rule(s, "demo", source) == (None if allowed else PREFIX)


def test_rules_combine_and_the_first_refusal_is_reported() -> None:
    s = _settings(team=_alias(projects=["demo"], buckets=["{project}-*"], prefix="u/{project}"))
    assert _rule(s, "demo", "demo-x@team/u/demo/a") is None
    assert _rule(s, "vision", "vision-x@team/u/vision") == PROJECTS
    assert _rule(s, "demo", "other@team/u/demo") == BUCKETS
    assert _rule(s, "demo", "demo-x@team/u/other") == PREFIX


def test_an_unknown_alias_is_refused() -> None:
    refusal = volume_refusal(_settings(), "demo", _volume("data@nowhere"))
    assert refusal is not None and refusal.rule == UNKNOWN_ALIAS


def test_alias_rules_are_checked_when_the_settings_load() -> None:
    with pytest.raises(ValidationError, match="plain key prefix"):
        _alias(prefix="projects/../{project}")
    with pytest.raises(ValidationError, match="must not be empty"):
        _alias(buckets=[""])
    assert _alias().projects is None and _alias().buckets is None and _alias().prefix is None


def test_endpoints_compare_in_one_spelling() -> None:
    assert normalize_endpoint("http://localhost:8333/") == normalize_endpoint(
        "http://127.0.0.1:8333"
    )
    assert normalize_endpoint("https://S3.example") == normalize_endpoint("https://s3.example:443")
    assert normalize_endpoint("http://a:1") != normalize_endpoint("http://a:2")


def _spec(*volumes: str) -> NotebookSpec:
    return NotebookSpec.model_validate(
        {
            "name": "nb",
            "framework": {"id": "python"},
            "resources": {"flavor": "ai1-1-cpu", "cpu": 1},
            "volumes": list(volumes),
        }
    )


def test_create_is_403_naming_the_volume_alias_bucket_and_rule() -> None:
    s = _settings(team=_alias(buckets=["{project}-*"]))
    catalog.validate(s, _spec("my-data@local/train:/workspace/d"), "demo")
    with pytest.raises(ApiError) as caught:
        catalog.validate(s, _spec("demo-a@team:/workspace/a", "other@team:/workspace/b:rw"), "demo")
    err = caught.value
    assert err.status == 403 and err.field == "volumes[1]"
    assert err.details == {"alias": "team", "bucket": "other", "prefix": "", "rule": BUCKETS}

    # an unknown alias stays a 422 of the alias field
    with pytest.raises(ApiError) as caught:
        catalog.validate(s, _spec("xyz@nowhere:/workspace/a"), "demo")
    assert caught.value.status == 422 and caught.value.field == "volumes[0].alias"


def test_the_403_body_is_json_like_the_other_errors() -> None:
    app = FastAPI()
    errors.install(app)

    @app.get("/refuse")
    def refuse() -> None:
        catalog.validate(_settings(), _spec("ainb-workspaces@local:/workspace/w"), "demo")

    body = TestClient(app).get("/refuse").json()
    assert body["field"] == "volumes[0]"
    assert body["alias"] == "local" and body["bucket"] == "ainb-workspaces"
    assert body["rule"] == PLATFORM_BUCKET
    assert body["error"].startswith("volumes[0]: storage refused by rule platform-bucket: ")
    assert body["errors"] == [
        {
            "field": "volumes[0]",
            "message": body["error"],
            "alias": "local",
            "bucket": "ainb-workspaces",
            "prefix": "",
            "rule": PLATFORM_BUCKET,
        }
    ]
    response = TestClient(app).get("/refuse")
    assert response.status_code == 403
