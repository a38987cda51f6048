#!/usr/bin/env bash
# Build ainb/platform:dev (the image docker-compose.yml runs) without any registry:
# the project's wheel plus its dependencies' wheels for bookworm's Python 3.11.2,
# downloaded on the host and installed offline on ainb-base:bookworm.
# Usage: images/build-platform.sh [--force]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="ainb/platform:dev"
log() { printf '[build-platform] %s\n' "$*" >&2; }

if [[ "${1:-}" != "--force" ]] && docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE exists (use --force to rebuild)"
    exit 0
fi
# The base image (and the notebook image) come from build.sh.
bash "$REPO/images/build.sh"

ctx="$(mktemp -d "${TMPDIR:-/var/tmp}/ainb-platform.XXXXXX")"
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/wheels"
cp "$REPO/images/platform/Dockerfile" "$ctx/"
python3 -m pip wheel --quiet --no-deps -w "$ctx/wheels" "$REPO"
deps=$(python3 - "$REPO/pyproject.toml" <<'PY'
import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))
PY
)
mapfile -t dep_list <<<"$deps"
python3 -m pip download --quiet --disable-pip-version-check --python-version 3.11.2 \
    --only-binary=:all: -d "$ctx/wheels" "${dep_list[@]}"
log "building $IMAGE"
docker build --network host -t "$IMAGE" "$ctx"
docker image ls "$IMAGE"
