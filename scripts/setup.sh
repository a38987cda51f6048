#!/usr/bin/env bash
# Shared by scripts/up and scripts/test: a project virtualenv with everything installed,
# a running Docker engine when Docker is installed, and the notebook image built.
# Idempotent; safe to run on every invocation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
extras="${1:-dev}"

log() { printf '[setup] %s\n' "$*" >&2; }

if [[ ! -x .venv/bin/python ]]; then
    log "creating .venv"
    python3 -m venv .venv
fi
stamp=".venv/.installed-$(sha256sum pyproject.toml | cut -c1-16)-${extras//,/-}"
if [[ ! -e "$stamp" ]]; then
    log "installing ainb[$extras] into .venv"
    .venv/bin/pip install --quiet --disable-pip-version-check -e ".[$extras]"
    touch "$stamp"
fi
export PATH="$PWD/.venv/bin:$PATH"

docker_answers() { docker info >/dev/null 2>&1; }

if command -v dockerd >/dev/null 2>&1 && ! docker_answers; then
    if [[ "$(id -u)" == 0 ]]; then
        log "starting dockerd (no bridge, no iptables: notebook containers get no network)"
        mkdir -p .ainb
        setsid nohup dockerd --bridge=none --iptables=false >.ainb/dockerd.log 2>&1 </dev/null &
        for _ in $(seq 1 60); do docker_answers && break; sleep 0.5; done
        docker_answers || { log "dockerd did not start; see .ainb/dockerd.log"; exit 1; }
    else
        log "Docker is installed but its engine does not answer; start it, or the local-process runtime is used"
    fi
fi

if docker_answers; then
    bash images/build.sh
    if command -v npm >/dev/null 2>&1; then
        bash images/build-vscode.sh
    else
        log "npm is missing: VS Code notebooks need images/build-vscode.sh (apt-get install nodejs npm)"
    fi
    bash images/build-pytorch.sh
else
    log "no Docker engine: notebooks will run with the local-process runtime"
fi
