#!/usr/bin/env bash
# Build ainb/platform:dev (the image docker-compose.yml runs) without any registry:
# the project's wheel plus its dependencies' wheels for bookworm's Python 3.11.2,
# downloaded on the host and installed offline on ainb-base:bookworm.
# Usage: images/build-platform.sh [--force]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE="ainb/platform:dev"
log() { printf '[build-platform] %s\n' "$*" >&2; }

# The notebook images (each script rebuilds only what is out of date with its inputs):
# the base image and JupyterLab, VS Code when npm is here, then PyTorch on top of them.
bash "$REPO/images/build.sh"
if command -v npm >/dev/null 2>&1; then
    bash "$REPO/images/build-vscode.sh"
else
    log "npm is missing: no VS Code image (apt-get install nodejs npm, then run this again)"
fi
bash "$REPO/images/build-pytorch.sh"

# The platform image is rebuilt when the code or its dependencies change.
source_hash=$(cd "$REPO" && find domain workflows activities worker api ledger cli pyproject.toml \
    -name '*.py' -o -name pyproject.toml | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-16)
built_hash=$(docker image inspect -f '{{ index .Config.Labels "ainb.source" }}' "$IMAGE" 2>/dev/null || true)
if [[ "${1:-}" != "--force" && "$built_hash" == "$source_hash" ]]; then
    log "$IMAGE is up to date with the code (use --force to rebuild)"
    exit 0
fi

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
docker build --network host --label "ainb.source=$source_hash" -t "$IMAGE" "$ctx"
docker image ls "$IMAGE"
