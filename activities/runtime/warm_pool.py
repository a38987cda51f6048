"""A warm pool per image on one Docker host: JupyterLab editors started ahead of any
notebook, so that a launch that fits one is served in the time of a container rename, a
limits update and a few directory renames instead of an editor's cold start.

A slot is a running container named ``ainb-pool-<slot>`` whose workspace and socket
directory are the slot's own (``<host>/pool/<slot>/{workspace,run}``); its editor accepts
no token until it is claimed (images/jupyterlab/ainb_access.PoolIdentityProvider). A
claim, in this order, so that every step after the first is redone by a retried launch:

1. the container is renamed to the notebook's container name: from here on it *is* the
   notebook's container (stop, poll, reconcile all find it by that name);
2. the slot's trees take the place of the notebook's (the bind mounts follow the
   directories, not their paths) and what the notebook's pull put there moves in;
3. the notebook's CPU and memory limits are applied;
4. the claim file gives the editor the notebook's tokens and environment.

What cannot be changed on a running container decides what a slot can serve (`misfit`):
JupyterLab, a token, no GPU, no volume (mounts are fixed at creation), and no variable
the editor's own start reads. Anything else gets a cold start, as without a pool.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import docker.errors

from activities.paths import NotebookPaths
from activities.runtime import editor_socket
from activities.runtime.base import ContainerState, LaunchSpec, Mount
from activities.runtime.docker_runtime import (
    NOTEBOOK_LABEL,
    POOL_LABEL,
    PROJECT_LABEL,
    DockerRuntime,
    create_kwargs,
)
from domain.gateway import EDITOR_RUN_DIR, EDITOR_SOCKET
from domain.ids import LABEL_PREFIX, container_name
from domain.spec import WORKSPACE

log = logging.getLogger("ainb.pool")

SLOT_LABEL = LABEL_PREFIX + "pool-slot"
SLOT_PREFIX = "ainb-pool-"
CLAIM_FILE = "claim.json"
# What a slot runs with until it is claimed: an idle editor needs little.
SLOT_CPUS = 1.0
SLOT_MEMORY = 1 << 30
# Variables the editor's own start reads (images/jupyterlab/ainb-editor): set before a
# cold start they shape the server; a claim only reaches what starts after it.
_START_ENV = {"HOME", "PATH", "SHELL", "PYTHONPATH", "IPYTHONDIR", "LANG", "USER"}
_TOKEN_ENV = {"AINB_EDITOR_TOKEN", "AINB_EDITOR_READ_TOKEN"}


def misfit(spec: LaunchSpec) -> str | None:
    """Why no warm editor can serve this launch (None: one can)."""
    if spec.editor != "jupyterlab":
        return f"editor {spec.editor}"
    if not spec.env.get("AINB_EDITOR_TOKEN"):
        return "no token (unsecure_http)"
    if spec.gpus or spec.gpu_ids:
        return "GPUs are bound at creation"
    if [m.target for m in spec.mounts] != [WORKSPACE] or spec.mounts[0].read_only:
        return "volumes are mounted at creation"
    for name in spec.env:
        if name in _START_ENV or name.startswith("JUPYTER_"):
            return f"env var {name} shapes the editor's start"
    return None


def claim_document(spec: LaunchSpec) -> dict:
    return {
        "token": spec.env["AINB_EDITOR_TOKEN"],
        "read_token": spec.env.get("AINB_EDITOR_READ_TOKEN", ""),
        "env": {k: v for k, v in spec.env.items() if k not in _TOKEN_ENV},
    }


@dataclass
class Slot:
    name: str
    image: str
    ready: bool = False


class WarmPool:
    def __init__(
        self,
        runtime: DockerRuntime,
        sizes: Mapping[str, int],
        root: Path,
        *,
        uid: int,
        gid: int,
        network: str,
    ) -> None:
        self._runtime = runtime
        self.sizes = {image: n for image, n in sizes.items() if n > 0}
        self.root = root
        self._uid, self._gid, self._network = uid, gid, network
        self._lock = threading.Lock()
        self._slots: dict[str, Slot] = {}
        # Slots a claim has taken and not finished: tidy() must not bring them back.
        self._claiming: set[str] = set()
        # Called (from the claiming thread) after each claim: time to refill.
        self.on_claim: Callable[[], None] = lambda: None

    # ------------------------------------------------------------------ views

    def slots(self) -> list[Slot]:
        with self._lock:
            return list(self._slots.values())

    def socket(self, slot: str) -> Path:
        return self.root / slot / "run" / Path(EDITOR_SOCKET).name

    # ------------------------------------------------------------------ filling

    def _containers(self) -> list:
        labels = [POOL_LABEL, *(f"{k}={v}" for k, v in self._runtime.scope.items())]
        return self._runtime.client.containers.list(all=True, filters={"label": labels})

    def tidy(self) -> None:
        """Forget and remove slots whose container is gone or stopped, slots claimed half
        way by an agent that died (their directory moved), and slot directories without a
        container."""
        alive: set[str] = set()
        with self._lock:
            claiming = set(self._claiming)
        for c in self._containers():
            slot = c.labels.get(SLOT_LABEL, "")
            if not c.name.startswith(SLOT_PREFIX) or slot in claiming:
                continue  # claimed: a notebook's container now (or about to be)
            usable = (
                c.status == "running"
                and c.labels.get(POOL_LABEL) in self.sizes
                and (self.root / slot / "run").is_dir()
            )
            if usable:
                alive.add(slot)
                with self._lock:
                    self._slots.setdefault(slot, Slot(slot, c.labels[POOL_LABEL]))
            else:
                self._remove(c)
        with self._lock:
            for name in [n for n in self._slots if n not in alive]:
                del self._slots[name]
        with self._lock:
            claiming |= self._claiming
        if self.root.is_dir():
            for path in self.root.iterdir():
                if path.name not in alive and path.name not in claiming:
                    shutil.rmtree(path, ignore_errors=True)

    def _remove(self, container) -> None:
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as err:  # e.g. a removal already under way
            log.warning("warm slot %s not removed: %s", container.name, err)

    def wanted(self) -> str | None:
        """An image whose pool is below its size (starting slots count: never above it)."""
        with self._lock:
            for image, size in self.sizes.items():
                if sum(1 for s in self._slots.values() if s.image == image) < size:
                    return image
        return None

    def start_slot(self, image: str) -> Slot:
        name = secrets.token_hex(6)
        slot_dir = self.root / name
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        slot_dir.mkdir(mode=0o700)
        for tree in ("workspace", "run"):
            (slot_dir / tree).mkdir(mode=0o700)
            os.lchown(slot_dir / tree, self._uid, self._gid)
        spec = LaunchSpec(
            notebook_id=name,
            project="",
            image=image,
            env={
                "AINB_EDITOR_SOCKET": EDITOR_SOCKET,
                "AINB_EDITOR_CLAIM_FILE": f"{EDITOR_RUN_DIR}/{CLAIM_FILE}",
                "AINB_BASE_URL": "/",
            },
            mounts=[Mount(source=slot_dir / "workspace", target=WORKSPACE)],
            workspace=slot_dir / "workspace",
            run_dir=slot_dir / "run",
            cpus=min(SLOT_CPUS, float(os.cpu_count() or 1)),
            memory_bytes=SLOT_MEMORY,
            network=self._network,
            user=f"{self._uid}:{self._gid}",
        )
        kwargs = create_kwargs(spec)
        kwargs["name"] = SLOT_PREFIX + name
        for label in (NOTEBOOK_LABEL, PROJECT_LABEL):
            kwargs["labels"].pop(label, None)
        kwargs["labels"].update({**self._runtime.scope, POOL_LABEL: image, SLOT_LABEL: name})
        slot = Slot(name, image)
        with self._lock:
            self._slots[name] = slot
        try:
            container = self._runtime.client.containers.create(image, **kwargs)
            container.start()
        except Exception:
            with self._lock:
                self._slots.pop(name, None)
            shutil.rmtree(slot_dir, ignore_errors=True)
            raise
        return slot

    def probe(self, slot: Slot) -> bool:
        """Whether the slot's editor serves (it answers 403 to anyone until claimed)."""
        sock = self.socket(slot.name)
        if not os.path.lexists(sock):
            return False
        if editor_socket.probe(sock, "/api/status") not in (200, 403):
            return False
        with self._lock:
            slot.ready = True
        return True

    def drop(self, slot: Slot) -> None:
        with self._lock:
            self._slots.pop(slot.name, None)
        try:
            self._remove(self._runtime.client.containers.get(SLOT_PREFIX + slot.name))
        except docker.errors.NotFound:
            pass
        shutil.rmtree(self.root / slot.name, ignore_errors=True)

    def drain(self) -> None:
        """Remove every unclaimed slot (the agent stops: a pool is only a cache)."""
        for c in self._containers():
            if c.name.startswith(SLOT_PREFIX):
                self._remove(c)
        with self._lock:
            self._slots.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ claiming

    def claim(self, spec: LaunchSpec, paths: NotebookPaths) -> ContainerState | None:
        """The notebook's container, made of a warm slot; None when none fits or is ready."""
        if misfit(spec) is not None:
            return None
        while True:
            with self._lock:
                slot = next(
                    (s for s in self._slots.values() if s.image == spec.image and s.ready),
                    None,
                )
                if slot is None:
                    return None
                del self._slots[slot.name]
                self._claiming.add(slot.name)
            try:
                try:
                    container = self._runtime.client.containers.get(SLOT_PREFIX + slot.name)
                    container.rename(container_name(spec.notebook_id))
                except docker.errors.APIError as err:
                    log.warning("warm slot %s could not be claimed (%s): dropped", slot.name, err)
                    self.drop(slot)
                    continue
                self.on_claim()
                return self.finish(container, spec, paths)
            finally:
                with self._lock:
                    self._claiming.discard(slot.name)

    def resume(self, spec: LaunchSpec, paths: NotebookPaths) -> None:
        """A retried launch found the notebook's container running: when it was made of a
        slot, finish the claim (the first attempt may have died half way)."""
        try:
            container = self._runtime.client.containers.get(container_name(spec.notebook_id))
        except docker.errors.NotFound:
            return
        if is_claimed_slot(container):
            self.finish(container, spec, paths)

    def finish(self, container, spec: LaunchSpec, paths: NotebookPaths) -> ContainerState:
        """Steps 2-4 of a claim; each is a no-op when done already (a retried launch)."""
        slot_dir = self.root / container.labels[SLOT_LABEL]
        for tree, target in (("workspace", paths.workspace), ("run", paths.run)):
            _take_place(slot_dir / tree, target)
        shutil.rmtree(slot_dir, ignore_errors=True)
        api = self._runtime.client.api
        # docker-py's update() knows no NanoCpus; the engine's endpoint does.
        api._raise_for_status(
            api._post_json(
                api._url("/containers/{0}/update", container.id),
                data={
                    "NanoCpus": int(spec.cpus * 1e9),
                    "Memory": spec.memory_bytes,
                    # As a cold container has it: swap as large as the memory.
                    "MemorySwap": 2 * spec.memory_bytes,
                },
            )
        )
        _write_claim(paths.run / CLAIM_FILE, claim_document(spec), self._uid, self._gid)
        container.reload()
        state = container.attrs.get("State", {})
        return ContainerState(
            name=container.name, running=bool(state.get("Running")), exit_code=None
        )


def is_claimed_slot(container) -> bool:
    return POOL_LABEL in container.labels and not container.name.startswith(SLOT_PREFIX)


def _take_place(slot_tree: Path, target: Path) -> None:
    """Make the slot's directory (bound into the container) the notebook's ``target``,
    holding what ``target`` held. Resumable: a crash at any point leaves either the slot
    tree or an ``.aside`` copy to finish from."""
    aside = target.with_name(target.name + ".aside")
    if slot_tree.is_dir():
        if target.exists() and not aside.exists():
            target.rename(aside)
        slot_tree.rename(target)
    if aside.is_dir():
        for entry in list(aside.iterdir()):
            dest = target / entry.name
            if dest.is_dir() and not dest.is_symlink() and entry.is_dir():
                shutil.rmtree(dest)
            elif dest.exists() or dest.is_symlink():
                dest.unlink()
            entry.rename(dest)
        aside.rmdir()


def _write_claim(path: Path, doc: dict, uid: int, gid: int) -> None:
    """Whole or not at all (the editor may read it any moment), and only the notebook's
    user reads it (its own tokens)."""
    # The directory is the editor's: after a claim its user may plant links in it, so
    # nothing here follows one (a retried launch writes the claim again).
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        os.fchown(f.fileno(), uid, gid)
        json.dump(doc, f)
    os.rename(tmp, path)
