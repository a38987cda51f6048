# Shared by the image build scripts (sourced): each image is stamped with a hash of what
# it is built from, as the label $INPUTS_LABEL, and rebuilt when that hash changes.
INPUTS_LABEL=ainb.inputs

# hash_inputs DIR FILE... < header: 16 hex digits over the header lines (versions, the
# base image's id) and the contents of each FILE of DIR.
hash_inputs() {
    local dir="$1" f
    shift
    {
        cat
        for f in "$@"; do
            printf '%s %s\n' "$f" "$(sha256sum <"$dir/$f" | cut -d' ' -f1)"
        done
    } | sha256sum | cut -c1-16
}

# The hash an existing image was stamped with (empty when none or no image).
built_hash() {
    docker image inspect -f "{{ index .Config.Labels \"$INPUTS_LABEL\" }}" "$1" 2>/dev/null || true
}

# files_present DIR FILE...: whether every input file is there.
files_present() {
    local dir="$1" f
    shift
    for f in "$@"; do [[ -f "$dir/$f" ]] || return 1; done
}
