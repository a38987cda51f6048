#!/bin/sh
# The namespace ainb runs in and the search attributes its workflows set, as the embedded
# stack registers them (worker/stack.py, from domain/search_attributes.py; a unit test
# keeps this list equal to that one). Runs at every start; every step is idempotent, so
# an upgrade that adds an attribute registers it here.
set -eu
: "${TEMPORAL_ADDRESS:?}" "${NAMESPACE:?}"
RETENTION="${RETENTION:-336h}"

# Client certificate when TLS_CERT is set (always, in docker-compose.yml); plain
# otherwise, which is how this script is tried against a dev server.
t() {
    if [ -n "${TLS_CERT:-}" ]; then
        temporal --address "$TEMPORAL_ADDRESS" --tls-ca-path "$TLS_CA" \
            --tls-cert-path "$TLS_CERT" --tls-key-path "$TLS_KEY" \
            --tls-server-name "$TLS_SERVER_NAME" "$@"
    else
        temporal --address "$TEMPORAL_ADDRESS" "$@"
    fi
}

# Until it succeeds, at most 5 minutes: the server may still be starting, and a new
# namespace takes a few seconds to reach every part of it (its cache refresh).
retry() {
    attempt=1
    until "$@" >/dev/null 2>&1; do
        [ "$attempt" -lt 60 ] || { "$@"; return 1; }
        attempt=$((attempt + 1))
        sleep 5
    done
}

retry t operator cluster health

# Retention applies to closed runs only: a notebook's workflow never closes, but each
# continue-as-new closes the run before it, and deleted notebooks close for good.
if ! t operator namespace describe -n "$NAMESPACE" >/dev/null 2>&1; then
    t operator namespace create -n "$NAMESPACE" --retention "$RETENTION"
fi

# name:type, one call each (some CLI versions register only the first of several
# --name). SQL visibility has room for 10 Keyword and 3 KeywordList per namespace.
ATTRIBUTES="NotebookState:Keyword NotebookProject:Keyword NotebookName:Keyword
NotebookHost:Keyword NotebookLabels:KeywordList NotebookEditor:Keyword
NotebookFlavor:Keyword NotebookId:Keyword"
for pair in $ATTRIBUTES; do
    retry t operator search-attribute create -n "$NAMESPACE" --name "${pair%%:*}" --type "${pair#*:}"
done

# Creating an attribute that exists under another type is skipped by the server without
# an error: check that each one has the type the workflows write.
listing="$(t operator search-attribute list -n "$NAMESPACE")"
for pair in $ATTRIBUTES; do
    if ! printf '%s\n' "$listing" | grep -Eq "(^|[[:space:]])${pair%%:*}[[:space:]]+${pair#*:}([[:space:]]|$)"; then
        echo "search attribute ${pair%%:*} is not a ${pair#*:} in namespace $NAMESPACE:" >&2
        printf '%s\n' "$listing" >&2
        exit 1
    fi
done
echo "namespace $NAMESPACE and its search attributes are in place"
