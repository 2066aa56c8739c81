#!/bin/sh
# Generate the TLS and SuperNode-authentication files of an atmflow deployment.
#
#   docker/certs/generate.sh [--out DIR] [--san NAME_OR_IP]... [--node NAME]...
#
# Writes into DIR (default: the folder of this script):
#   ca.crt, ca.key             a self-signed certificate authority (ECDSA P-256, 10 years)
#   server.crt, server.key     the SuperLink's certificate, signed by the CA, valid for
#                              localhost, 127.0.0.1, superlink and every --san
#   node-NAME, node-NAME.pub   one SuperNode authentication key pair per --node (ECDSA P-384,
#                              OpenSSH format, as Flower 1.42 expects)
#   node-keys.toml             NAME = "<node-NAME.pub>" for every --node: the run-config key
#                              node-keys-file binds each task to its node's key (public; no secret)
# Give ca.crt to every SuperNode (--root-certificates) and to `flwr` (root-certificates in the
# connection); keep the *.key files and node private keys secret. Needs openssl and ssh-keygen.
set -eu

out=$(cd "$(dirname "$0")" && pwd)
sans="DNS:localhost,IP:127.0.0.1,DNS:superlink"
nodes=""
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out=$2; shift 2 ;;
        --san)
            case "$2" in
                *[!0-9.]*) sans="$sans,DNS:$2" ;;
                *) sans="$sans,IP:$2" ;;
            esac
            shift 2 ;;
        --node) nodes="$nodes $2"; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "generate.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done
for tool in openssl ssh-keygen; do
    command -v "$tool" >/dev/null || { echo "generate.sh: $tool is missing; install it (Debian: apt-get install openssl openssh-client)" >&2; exit 1; }
done
mkdir -p "$out"
cd "$out"

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out ca.key
openssl req -new -x509 -key ca.key -sha256 -days 3650 -subj "/CN=atmflow deployment CA" -out ca.crt
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out server.key
openssl req -new -key server.key -subj "/CN=superlink" -out server.csr
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' \
    "$sans" > server.ext
openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
    -extfile server.ext -out server.crt 2>/dev/null
rm -f server.csr server.ext ca.srl

for node in $nodes; do
    rm -f "node-$node" "node-$node.pub"
    ssh-keygen -q -t ecdsa -b 384 -N "" -C "atmflow-$node" -f "node-$node"
done
if [ -n "$nodes" ]; then
    {
        echo "# task = its SuperNode's public key (run-config key node-keys-file; written by generate.sh)"
        for node in $nodes; do printf '"%s" = "%s"\n' "$node" "$(cat "node-$node.pub")"; done
    } > node-keys.toml
fi
chmod 600 ca.key server.key
echo "generate.sh: wrote TLS files (SANs $sans)${nodes:+ and node keys for$nodes} to $out"
