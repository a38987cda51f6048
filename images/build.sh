#!/usr/bin/env bash
# Build the Docker image ainb/jupyterlab-python:3.11 on this machine, without any
# container registry:
#   1. ainb-base:bookworm  -- a Debian bookworm rootfs made with debootstrap from the
#      machine's own Debian mirror, imported with `docker import` (skipped if present);
#   2. wheels for JupyterLab, downloaded on the host with pip into
#      $REPO/.cache/wheels/jupyterlab (reused if present and complete);
#   3. `docker build` of images/jupyterlab/Dockerfile, installing the wheels offline.
#
# Idempotent: the image carries the label ainb.inputs, a hash of what it is built
# from (Dockerfile, ainb-editor, overrides.json, ainb_access.py, the JupyterLab spec, the target
# python/glibc/arch and the id of ainb-base:bookworm); it is rebuilt only when that
# hash differs from the one of the files and settings here (or it is missing), or
# with --force.
#
# Usage: images/build.sh [--force]
#   --force   rebuild ainb/jupyterlab-python:3.11 even if it is up to date (the base
#             image and the wheel cache are still reused; `docker rmi ainb-base:bookworm`
#             or removing .cache/wheels/jupyterlab forces those too).
# Environment (all optional):
#   AINB_JUPYTERLAB_SPEC  pip requirement to install      (default jupyterlab==4.6.6)
#   AINB_DEBIAN_MIRROR    Debian mirror for debootstrap   (default: from apt sources)
#   AINB_WHEEL_DIR        wheel cache  (default $REPO/.cache/wheels/jupyterlab)
#   AINB_BUILD_TMPDIR     where the temporary rootfs/context go (default /var/tmp)
# Needs: root (for debootstrap), a running Docker engine, debootstrap (only while
# ainb-base:bookworm is missing), python3 with pip on the host (or, failing that,
# pip is run inside ainb-base:bookworm with the host's CA bundle mounted).
set -euo pipefail

IMAGE="ainb/jupyterlab-python:3.11"
BASE_IMAGE="ainb-base:bookworm"
SUITE="bookworm"
# python3 in bookworm is 3.11.2: wheels are chosen for it, not for the host's python.
TARGET_PYTHON="3.11.2"
# glibc of bookworm is 2.36: only wheels that run on it are accepted.
TARGET_GLIBC_MINOR=36
BASE_PACKAGES="python3,python3-venv,ca-certificates,tini"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
IMAGE_DIR="$REPO/images/jupyterlab"
JUPYTERLAB_SPEC="${AINB_JUPYTERLAB_SPEC:-jupyterlab==4.6.6}"
WHEEL_DIR="${AINB_WHEEL_DIR:-$REPO/.cache/wheels/jupyterlab}"
TMP_PARENT="${AINB_BUILD_TMPDIR:-/var/tmp}"

log() { printf '[build.sh] %s\n' "$*" >&2; }
die() { printf '[build.sh] ERROR: %s\n' "$*" >&2; exit 1; }

usage() { sed -n '2,/^set -euo pipefail/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; }

FORCE=0
for arg in "$@"; do
    case "$arg" in
        --force) FORCE=1 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $arg" ;;
    esac
done

# --- temporary directories, removed on exit (never following mounts) ------------
TMP_DIRS=()
remove_tree() {
    local dir="$1" mnt
    [[ -n "$dir" && -d "$dir" ]] || return 0
    # debootstrap mounts proc/sys/dev in the target; an interrupted run can leave
    # them mounted. Unmount anything below $dir (deepest first) before removing.
    while read -r mnt; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || true
    done < <(awk -v d="$dir/" 'index($2, d) == 1 { print $2 }' /proc/self/mounts | sort -r)
    rm -rf --one-file-system "$dir"
}
cleanup() {
    local d
    for d in "${TMP_DIRS[@]+"${TMP_DIRS[@]}"}"; do remove_tree "$d"; done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

image_exists() { docker image inspect "$1" >/dev/null 2>&1; }
IMAGE_FILES=(Dockerfile ainb-editor overrides.json ainb_access.py)
# shellcheck source=images/inputs.sh
source "$REPO/images/inputs.sh"

# A hash of everything the image is built from; stamped on it as $INPUTS_LABEL.
inputs_hash() {
    printf 'spec=%s\npython=%s\nglibc=2.%s\narch=%s\nbase=%s\n' "$JUPYTERLAB_SPEC" \
        "$TARGET_PYTHON" "$TARGET_GLIBC_MINOR" "$(uname -m)" \
        "$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)" \
        | hash_inputs "$IMAGE_DIR" "${IMAGE_FILES[@]}"
}

show_images() {
    log "images now present:"
    docker image ls >&2 || true
}

# --- preflight: say clearly what is missing ---------------------------------------
missing=()
if ! command -v docker >/dev/null 2>&1; then
    missing+=("docker CLI not found (install it: apt-get install -y docker.io)")
elif ! docker_err="$(docker info 2>&1 >/dev/null)"; then
    missing+=("Docker engine not answering ('docker info' failed: $(printf '%s' "$docker_err" | grep -v '^$' | tail -n 1)). Start it, e.g.: mkdir -p /var/log/ainb && nohup dockerd --bridge=none --iptables=false >/var/log/ainb/dockerd.log 2>&1 &")
fi
if [[ ${#missing[@]} -eq 0 ]]; then
    if image_exists "$IMAGE" && files_present "$IMAGE_DIR" "${IMAGE_FILES[@]}"; then
        want_hash="$(inputs_hash)" have_hash="$(built_hash "$IMAGE")"
        if [[ "$have_hash" == "$want_hash" && $FORCE -eq 0 ]]; then
            log "$IMAGE is up to date ($INPUTS_LABEL=$want_hash); nothing to do (pass --force to rebuild)."
            show_images
            exit 0
        elif [[ "$have_hash" != "$want_hash" ]]; then
            log "$IMAGE was built from other inputs ($INPUTS_LABEL '${have_hash:-none}', now $want_hash): rebuilding"
        fi
    fi
    need_base=0
    image_exists "$BASE_IMAGE" || need_base=1
else
    need_base=1 # unknown: the engine cannot be asked
fi
if [[ $need_base -eq 1 ]]; then
    command -v debootstrap >/dev/null 2>&1 \
        || missing+=("debootstrap not found, needed to create $BASE_IMAGE (install it: apt-get install -y debootstrap)")
    [[ "$(id -u)" -eq 0 ]] \
        || missing+=("not running as root, needed by debootstrap to create $BASE_IMAGE (run with sudo)")
fi
files_present "$IMAGE_DIR" "${IMAGE_FILES[@]}" \
    || missing+=("build files missing under $IMAGE_DIR (${IMAGE_FILES[*]})")
if [[ ${#missing[@]} -gt 0 ]]; then
    printf '[build.sh] ERROR: cannot build %s, missing:\n' "$IMAGE" >&2
    printf '  - %s\n' "${missing[@]}" >&2
    exit 1
fi
mkdir -p "$TMP_PARENT"

# --- 1. base image -------------------------------------------------------------
# Prints the first Debian archive URI of the machine's apt sources (not the
# security archive): one-line sources.list format first, then deb822 *.sources.
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
                /^[ \t]/ { # continuation line of a multi-line field
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

build_base() {
    local mirror rootfs start
    start=$SECONDS
    mirror="$(detect_mirror)"
    rootfs="$(mktemp -d "$TMP_PARENT/ainb-rootfs.XXXXXX")"
    TMP_DIRS+=("$rootfs")
    log "creating $BASE_IMAGE: debootstrap --variant=minbase $SUITE from $mirror"
    debootstrap --variant=minbase --include="$BASE_PACKAGES" "$SUITE" "$rootfs" "$mirror"
    # Drop what an image does not need: downloaded .debs, apt lists, man pages.
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
        "$rootfs"/var/lib/apt/lists/* "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* \
        "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/* "$rootfs"/root/.bash_history
    : >"$rootfs/etc/hostname"
    log "importing the rootfs as $BASE_IMAGE"
    tar --numeric-owner -C "$rootfs" -c . | docker import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' \
        --change 'CMD ["/bin/bash"]' \
        - "$BASE_IMAGE" >/dev/null
    remove_tree "$rootfs"
    log "$BASE_IMAGE created in $((SECONDS - start)) s"
}

if image_exists "$BASE_IMAGE"; then
    log "$BASE_IMAGE exists; reusing it"
else
    build_base
fi

# --- 2. wheels -----------------------------------------------------------------
# pip inside a container does not trust this machine's TLS setup, so the wheels
# are downloaded on the host for the image's python and glibc, then installed
# offline in the Dockerfile.
ensure_wheels() {
    local arch stamp want partial start plat py_mm
    local -a pip_args platforms=()
    arch="$(uname -m)"
    stamp="$WHEEL_DIR/.ainb-complete"
    want="spec=$JUPYTERLAB_SPEC python=$TARGET_PYTHON glibc=2.$TARGET_GLIBC_MINOR arch=$arch"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
        log "reusing wheels in $WHEEL_DIR ($(find "$WHEEL_DIR" -name '*.whl' | wc -l) wheels)"
        return 0
    fi
    start=$SECONDS
    for ((plat = TARGET_GLIBC_MINOR; plat >= 17; plat--)); do
        platforms+=(--platform "manylinux_2_${plat}_${arch}")
    done
    platforms+=(--platform "manylinux2014_${arch}")
    [[ "$arch" == x86_64 || "$arch" == i686 ]] \
        && platforms+=(--platform "manylinux2010_${arch}" --platform "manylinux1_${arch}")
    py_mm="${TARGET_PYTHON%.*}" # 3.11
    pip_args=(download --disable-pip-version-check --only-binary=:all:
        --python-version "$TARGET_PYTHON" --implementation cp --abi "cp${py_mm/./}"
        "${platforms[@]}")
    partial="$WHEEL_DIR.partial"
    rm -rf "$partial"
    mkdir -p "$partial"
    log "downloading wheels for '$JUPYTERLAB_SPEC' (python $TARGET_PYTHON) into $WHEEL_DIR"
    if python3 -m pip --version >/dev/null 2>&1; then
        python3 -m pip "${pip_args[@]}" -d "$partial" "$JUPYTERLAB_SPEC"
    else
        log "no pip on the host; running pip inside $BASE_IMAGE with the host's CA bundle"
        local ca=/etc/ssl/certs/ca-certificates.crt
        [[ -r "$ca" ]] || die "no pip on the host (apt-get install -y python3-pip) and no CA bundle at $ca"
        docker run --rm --network host \
            -v "$partial:/wheels" -v "$ca:/host-ca.crt:ro" \
            -e PIP_CERT=/host-ca.crt -e SSL_CERT_FILE=/host-ca.crt -e REQUESTS_CA_BUNDLE=/host-ca.crt \
            "$BASE_IMAGE" sh -euc 'python3 -m venv /tmp/pipvenv && /tmp/pipvenv/bin/pip "$@" -d /wheels' \
            pip "${pip_args[@]}" "$JUPYTERLAB_SPEC"
    fi
    printf '%s\n' "$want" >"$partial/.ainb-complete"
    rm -rf "$WHEEL_DIR"
    mv "$partial" "$WHEEL_DIR"
    log "downloaded $(find "$WHEEL_DIR" -name '*.whl' | wc -l) wheels in $((SECONDS - start)) s"
}
ensure_wheels

# --- 3. the image ----------------------------------------------------------------
build_image() {
    local ctx start old_id new_id hash
    start=$SECONDS
    hash="$(inputs_hash)"
    old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE" 2>/dev/null || true)"
    ctx="$(mktemp -d "$TMP_PARENT/ainb-context.XXXXXX")"
    TMP_DIRS+=("$ctx")
    cp "${IMAGE_FILES[@]/#/$IMAGE_DIR/}" "$ctx/"
    mkdir "$ctx/wheels"
    cp -l "$WHEEL_DIR"/*.whl "$ctx/wheels/" 2>/dev/null || cp "$WHEEL_DIR"/*.whl "$ctx/wheels/"
    log "building $IMAGE ($INPUTS_LABEL=$hash)"
    # The classic builder is enough (no BuildKit features are used) and needs no
    # buildx plugin; host networking because the engine may run without a bridge.
    DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}" docker build --network host --pull=false \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" \
        --build-arg "JUPYTERLAB_SPEC=$JUPYTERLAB_SPEC" \
        --label "$INPUTS_LABEL=$hash" \
        -t "$IMAGE" "$ctx"
    remove_tree "$ctx"
    # The builder stage (wheels + a copy of the venv) is not needed afterwards.
    docker image prune -f --filter "label=ainb.stage=jupyterlab-builder" >/dev/null || true
    new_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
    if [[ -n "$old_id" && "$old_id" != "$new_id" ]]; then
        docker image rm "$old_id" >/dev/null 2>&1 || true # ok if a container still uses it
    fi
    log "smoke test: jupyter lab --version in $IMAGE"
    docker run --rm --network none --entrypoint /opt/ainb/venv/bin/jupyter "$IMAGE" lab --version >&2
    [[ "$(docker run --rm --network none --entrypoint id "$IMAGE" -u)" == 1000 ]] \
        || die "$IMAGE does not run as uid 1000"
    log "$IMAGE built in $((SECONDS - start)) s"
}
build_image

show_images
