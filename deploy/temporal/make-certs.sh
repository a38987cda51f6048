#!/usr/bin/env bash
# A private CA and the certificates Temporal's mTLS needs, for a first installation or a
# trial. With a PKI of your own, issue the same set from it instead:
#   server.pem/key    for the Temporal server: the name clients dial (SAN), and usable
#                     as a client too (serverAuth + clientAuth), because the server's own
#                     roles present it to each other and to the frontend
#   admin.pem/key     the admin-tools jobs (namespace, search attributes)
#   ui.pem/key        the Web UI
#   platform.pem/key  the API, control workers and host agents (temporal_tls)
# all signed by the one CA the frontend trusts (TEMPORAL_TLS_CLIENT1_CA_CERT).
#
# Usage: make-certs.sh <server name> [out dir]   (default out dir: ./pki)
#   <out>/server/   mount on the Temporal machine as CERTS_DIR (docker-compose.yml)
#   <out>/client/   copy to every API, control-worker and GPU host as /etc/ainb/temporal/
#   <out>/ca/       the CA's key: keep it off these machines
set -euo pipefail
name="${1:?usage: make-certs.sh <server name, e.g. temporal.internal.example.com> [out dir]}"
out="${2:-pki}"
days="${DAYS:-825}"
umask 077
mkdir -p "$out"/{ca,server,client}

if [[ ! -f "$out/ca/ca.key" ]]; then
    openssl req -x509 -newkey rsa:4096 -sha256 -nodes -days 3650 \
        -subj "/CN=ainb Temporal CA" -keyout "$out/ca/ca.key" -out "$out/ca/ca.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
fi

# issue <dir> <file stem> <CN> <extendedKeyUsage> [subjectAltName]
issue() {
    local dir="$1" stem="$2" cn="$3" eku="$4" san="${5:-}"
    local ext=(-addext "basicConstraints=critical,CA:FALSE"
        -addext "keyUsage=critical,digitalSignature,keyEncipherment"
        -addext "extendedKeyUsage=$eku")
    [[ -n "$san" ]] && ext+=(-addext "subjectAltName=$san")
    openssl req -new -newkey rsa:2048 -sha256 -nodes -subj "/CN=$cn" \
        -keyout "$dir/$stem.key" -out "$dir/$stem.csr" "${ext[@]}"
    openssl x509 -req -sha256 -days "$days" -in "$dir/$stem.csr" -copy_extensions copy \
        -CA "$out/ca/ca.pem" -CAkey "$out/ca/ca.key" -CAcreateserial -out "$dir/$stem.pem" 2>/dev/null
    rm -f "$dir/$stem.csr"
}

# "temporal" is the name the compose file's own services dial.
issue "$out/server" server "$name" serverAuth,clientAuth "DNS:$name,DNS:temporal,DNS:localhost"
issue "$out/server" admin "ainb-temporal-admin" clientAuth
issue "$out/server" ui "ainb-temporal-ui" clientAuth
issue "$out/client" platform "ainb-platform" clientAuth
cp "$out/ca/ca.pem" "$out/server/ca.pem"
cp "$out/ca/ca.pem" "$out/client/ca.pem"
chmod 0644 "$out"/server/*.pem "$out"/client/*.pem

# Every Temporal image runs as uid 1000: its keys must be readable by that user.
if [[ "$(id -u)" == 0 ]]; then
    chown -R 1000:1000 "$out/server"
else
    echo "note: as root, chown -R 1000:1000 $out/server (the Temporal images' user)" >&2
fi
echo "certificates for $name in $out (server/ for Temporal, client/ for the platform)"
