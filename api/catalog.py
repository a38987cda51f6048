"""Checks of a spec against what the operator offers and allows: the 422s that pydantic
cannot know, and the 403s of the storage aliases' rules."""

from __future__ import annotations

from api.errors import ApiError
from domain.config import Settings
from domain.spec import NotebookSpec, env_problem
from domain.storage_policy import volume_refusal


def _unprocessable(field: str, message: str) -> ApiError:
    return ApiError(422, f"{field}: {message}", field=field)


def resolve_image(settings: Settings, spec: NotebookSpec) -> tuple[NotebookSpec, str]:
    """Return the spec with its framework version filled in, and the image to run."""
    framework = settings.frameworks.get(spec.framework.id)
    if framework is None:
        known = ", ".join(sorted(settings.frameworks))
        raise _unprocessable(
            "framework.id", f"unknown framework {spec.framework.id!r}; available: {known}"
        )
    version = spec.framework.version or framework.default_version
    entry = framework.versions.get(version)
    if entry is None:
        known = ", ".join(sorted(framework.versions))
        raise _unprocessable(
            "framework.version",
            f"unknown version {version!r} of {spec.framework.id}; available: {known}",
        )
    image = entry.images.get(spec.editor.value)
    if image is None:
        known = ", ".join(sorted(entry.images))
        raise _unprocessable(
            "editor",
            f"editor {spec.editor.value!r} is not available for {spec.framework.id} {version}; "
            f"available: {known}",
        )
    resolved = spec.model_copy(
        update={"framework": spec.framework.model_copy(update={"version": version})}
    )
    return resolved, image


def check_resources(settings: Settings, spec: NotebookSpec) -> None:
    res = spec.resources
    flavor = settings.flavors.get(res.flavor)
    if flavor is None:
        known = ", ".join(sorted(settings.flavors))
        raise _unprocessable(
            "resources.flavor", f"unknown flavor {res.flavor!r}; available: {known}"
        )
    if flavor.kind != res.kind:
        raise _unprocessable(
            f"resources.{res.kind}",
            f"flavor {res.flavor} is a {flavor.kind} flavor: give resources.{flavor.kind} instead",
        )
    if res.kind == "gpu" and res.units > settings.notebook_max_gpus:
        raise _unprocessable(
            "resources.gpu",
            f"at most {settings.notebook_max_gpus} GPUs per notebook (notebook_max_gpus)",
        )
    if res.kind == "cpu" and res.units * flavor.cpu_per_unit > settings.notebook_max_cpus:
        raise _unprocessable(
            "resources.cpu",
            f"{res.units} x {res.flavor} is {res.units * flavor.cpu_per_unit:g} vCPUs; at most "
            f"{settings.notebook_max_cpus} per notebook (notebook_max_cpus)",
        )
    if res.units > flavor.max_units:
        raise _unprocessable(
            f"resources.{res.kind}",
            f"at most {flavor.max_units} {flavor.kind} units per notebook with flavor {res.flavor}",
        )


def check_volumes(settings: Settings, spec: NotebookSpec, project: str) -> None:
    """Every volume's alias exists (else 422) and lets the project mount it (else 403
    naming the volume, the alias, the bucket and the rule: domain/storage_policy.py)."""
    for index, volume in enumerate(spec.volumes):
        if volume.alias not in settings.storage_aliases:
            known = ", ".join(sorted(settings.storage_aliases)) or "none"
            raise _unprocessable(
                f"volumes[{index}].alias",
                f"unknown storage alias {volume.alias!r}; configured: {known}",
            )
    for index, volume in enumerate(spec.volumes):
        refusal = volume_refusal(settings, project, volume)
        if refusal is not None:
            field = f"volumes[{index}]"
            raise ApiError(
                403,
                f"{field}: storage refused by rule {refusal.rule}: {refusal.message}",
                field=field,
                details=refusal.details(),
            )


def check_env(spec: NotebookSpec) -> None:
    """The reserved environment and the bounds of env_vars (domain.spec.env_problem)."""
    problem = env_problem(spec.env_vars)
    if problem is not None:
        variable, message = problem
        raise ApiError(
            422,
            f"env_vars: {message}",
            field="env_vars",
            details={"variable": variable} if variable else None,
        )


def validate(settings: Settings, spec: NotebookSpec, project: str) -> tuple[NotebookSpec, str]:
    check_resources(settings, spec)
    check_env(spec)
    check_volumes(settings, spec, project)
    return resolve_image(settings, spec)


def check_timeout(settings: Settings, timeout: int) -> None:
    low, high = settings.timeout_min_s, settings.timeout_max_s
    if not low <= timeout <= high:
        raise _unprocessable("timeout", f"must be between {low} and {high} seconds, got {timeout}")
