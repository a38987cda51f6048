"""Checks of a spec against what the operator offers: the 422s that pydantic cannot know."""

from __future__ import annotations

from api.errors import ApiError
from domain.config import Settings
from domain.spec import NotebookSpec


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


def check_volumes(settings: Settings, spec: NotebookSpec) -> None:
    for index, volume in enumerate(spec.volumes):
        if volume.alias not in settings.storage_aliases:
            known = ", ".join(sorted(settings.storage_aliases)) or "none"
            raise _unprocessable(
                f"volumes[{index}].alias",
                f"unknown storage alias {volume.alias!r}; configured: {known}",
            )


def validate(settings: Settings, spec: NotebookSpec) -> tuple[NotebookSpec, str]:
    check_resources(settings, spec)
    check_volumes(settings, spec)
    return resolve_image(settings, spec)


def check_timeout(settings: Settings, timeout: int) -> None:
    low, high = settings.timeout_min_s, settings.timeout_max_s
    if not low <= timeout <= high:
        raise _unprocessable("timeout", f"must be between {low} and {high} seconds, got {timeout}")
