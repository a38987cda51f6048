#!/usr/bin/env bash
# Build the PyTorch framework's images, one per editor, on top of the editor images:
#   ainb/pytorch-jupyterlab:2.13  from ainb/jupyterlab-python:3.11 (images/build.sh)
#   ainb/pytorch-vscode:2.13      from ainb/vscode-python:3.11     (images/build-vscode.sh)
# The CPU wheel of torch and its dependencies are downloaded on the host for the
# images' python 3.11 into $REPO/.cache/wheels/pytorch (pip finds torch's +cpu
# wheel through the machine's pip configuration), then served to `docker build`
# over loopback HTTP and installed offline.
#
# Idempotent: each image carries the label ainb.inputs, a hash of what it is built
# from (images/pytorch/Dockerfile, the requirements, the tag and the id of its editor
# image); it is rebuilt only when that hash differs (so a rebuilt editor image means a
# rebuilt PyTorch image) or it is missing, or with --force. An editor image that is
# missing is skipped with a message.
#
# Usage: images/build-pytorch.sh [--force]
# Environment: AINB_TORCH_SPEC (default "torch==2.13.0+cpu numpy<3": requirements,
# space-separated), AINB_TORCH_WHEELS (the wheel cache).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TORCH_SPEC="${AINB_TORCH_SPEC:-torch==2.13.0+cpu numpy<3}"
read -ra REQUIREMENTS <<<"$TORCH_SPEC"
TAG=2.13
WHEEL_DIR="${AINB_TORCH_WHEELS:-$REPO/.cache/wheels/pytorch}"
EDITORS=("jupyterlab=ainb/jupyterlab-python:3.11" "vscode=ainb/vscode-python:3.11")

DOCKERFILE="$REPO/images/pytorch/Dockerfile"
# shellcheck source=images/inputs.sh
source "$REPO/images/inputs.sh"

log() { printf '[build-pytorch.sh] %s\n' "$*" >&2; }
FORCE=0
[[ "${1:-}" == --force ]] && FORCE=1

# A hash of everything an image is built from (inputs_hash EDITOR_IMAGE).
inputs_hash() {
    printf 'spec=%s\ntag=%s\neditor=%s\n' "$TORCH_SPEC" "$TAG" "$(docker image inspect -f '{{.Id}}' "$1")" \
        | hash_inputs "$(dirname "$DOCKERFILE")" "$(basename "$DOCKERFILE")"
}

todo=()
for pair in "${EDITORS[@]}"; do
    editor="${pair%%=*}" base="${pair#*=}"
    target="ainb/pytorch-$editor:$TAG"
    if ! docker image inspect "$base" >/dev/null 2>&1; then
        log "skipping $target: its editor image $base is missing"
        continue
    fi
    want_hash="$(inputs_hash "$base")"
    have_hash="$(built_hash "$target")"
    if [[ "$have_hash" == "$want_hash" ]] && ((FORCE == 0)); then
        log "$target is up to date ($INPUTS_LABEL=$want_hash; pass --force to rebuild)"
        continue
    elif docker image inspect "$target" >/dev/null 2>&1 && [[ "$have_hash" != "$want_hash" ]]; then
        log "$target was built from other inputs ($INPUTS_LABEL '${have_hash:-none}', now $want_hash): rebuilding"
    fi
    todo+=("$pair")
done
((${#todo[@]})) || exit 0

stamp="$WHEEL_DIR/.ainb-complete"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$TORCH_SPEC" ]]; then
    log "downloading wheels for $TORCH_SPEC (python 3.11, glibc 2.36) into $WHEEL_DIR"
    platforms=()
    for ((minor = 36; minor >= 17; minor--)); do
        platforms+=(--platform "manylinux_2_${minor}_x86_64")
    done
    rm -rf "$WHEEL_DIR.partial" && mkdir -p "$WHEEL_DIR.partial"
    python3 -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
        --python-version 3.11.2 --implementation cp --abi cp311 \
        "${platforms[@]}" --platform manylinux2014_x86_64 --platform any \
        -d "$WHEEL_DIR.partial" "${REQUIREMENTS[@]}"
    rm -rf "$WHEEL_DIR" && mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
    printf '%s' "$TORCH_SPEC" >"$stamp"
fi

port="$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
python3 -m http.server --bind 127.0.0.1 --directory "$WHEEL_DIR" "$port" >/dev/null 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 1 50); do
    python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$port/')" \
        2>/dev/null && break
    sleep 0.1
done

for pair in "${todo[@]}"; do
    editor="${pair%%=*}" base="${pair#*=}"
    target="ainb/pytorch-$editor:$TAG"
    start=$SECONDS
    hash="$(inputs_hash "$base")"
    old_id="$(docker image inspect -f '{{.Id}}' "$target" 2>/dev/null || true)"
    log "building $target from $base ($INPUTS_LABEL=$hash)"
    DOCKER_BUILDKIT=0 docker build --network host --pull=false -q -t "$target" \
        --build-arg EDITOR_IMAGE="$base" \
        --build-arg WHEELS_URL="http://127.0.0.1:$port/" \
        --build-arg TORCH_SPEC="$TORCH_SPEC" \
        --label "$INPUTS_LABEL=$hash" \
        "$REPO/images/pytorch" >/dev/null
    new_id="$(docker image inspect -f '{{.Id}}' "$target")"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true # ok if a container still uses it
    fi
    [[ "$(docker run --rm --network none --entrypoint id "$target" -u)" == 1000 ]] \
        || { log "ERROR: $target does not run as uid 1000"; exit 1; }
    log "$target built in $((SECONDS - start)) s"
done
