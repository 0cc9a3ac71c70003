#!/usr/bin/env bash
# gen-certs: a development CA and one node certificate signed by it (ECDSA
# P-256, openssl CLI only), for local clusters, tests and compose.
#
#   deploy/gen-certs.sh [--force] [OUTDIR] [SAN...]
#
# OUTDIR defaults to ./certs. Writes ca.pem, ca.key, node.pem, node.key there.
# The node certificate covers IP:127.0.0.1, IP:::1, DNS:localhost and the DNS
# names node1 node2 node3 balancer, plus every extra SAN given (an IP literal
# becomes IP:, anything else DNS:). Existing files are kept unless --force:
# running it twice is harmless. Keys are written 0600.
set -euo pipefail

die() { echo "gen-certs: $*" >&2; exit 1; }

force=0
outdir=
sans=()
for arg in "$@"; do
  case $arg in
    --force) force=1 ;;
    -h|--help) sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$arg' (usage: $0 [--force] [OUTDIR] [SAN...])" ;;
    *) if [ -z "$outdir" ]; then outdir=$arg; else sans+=("$arg"); fi ;;
  esac
done
outdir=${outdir:-certs}
command -v openssl >/dev/null || die "openssl not found (deploy/install-deps.sh installs it)"

ca_pem=$outdir/ca.pem ca_key=$outdir/ca.key
node_pem=$outdir/node.pem node_key=$outdir/node.key

if [ "$force" = 0 ] && [ -s "$ca_pem" ] && [ -s "$ca_key" ] && [ -s "$node_pem" ] && [ -s "$node_key" ]; then
  echo "gen-certs: $outdir already holds ca.pem, ca.key, node.pem, node.key (--force to replace)"
  exit 0
fi

mkdir -p "$outdir"
# Not left to the umask: whoever can write here can replace ca.pem.
chmod 0755 "$outdir"
# Keys and temporary files are created private from the start, not chmod'ed later.
umask 077
tmp=$(mktemp -d "${TMPDIR:-/tmp}/berth-certs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT

# subjectAltName list: the defaults, then the extras, without duplicates.
is_ip() {
  # An IPv4 dotted quad or anything with a colon (IPv6); names never contain ':'.
  [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]] || [[ $1 == *:* ]]
}
san_list="IP:127.0.0.1,IP:::1,DNS:localhost,DNS:node1,DNS:node2,DNS:node3,DNS:balancer"
for s in "${sans[@]+"${sans[@]}"}"; do
  [ -n "$s" ] || continue
  [[ $s =~ ^[A-Za-z0-9.:_*-]+$ ]] || die "SAN '$s' is neither an IP address nor a DNS name"
  if is_ip "$s"; then entry="IP:$s"; else entry="DNS:$s"; fi
  case ",$san_list," in *",$entry,"*) ;; *) san_list+=",$entry" ;; esac
done

serial() { echo "0x$(openssl rand -hex 16)"; }

# The CA is reused when it exists (unless --force), so certificates issued
# earlier stay valid; only the node certificate is (re)issued.
if [ "$force" = 1 ] || [ ! -s "$ca_pem" ] || [ ! -s "$ca_key" ]; then
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/ca.key" 2>"$tmp/err" \
    || die "CA key generation failed: $(cat "$tmp/err")"
  openssl req -new -x509 -key "$tmp/ca.key" -sha256 -days 3650 -set_serial "$(serial)" \
    -subj "/O=berth development/CN=berth development CA" \
    -addext "basicConstraints=critical,CA:true" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash" \
    -out "$tmp/ca.pem" 2>"$tmp/err" || die "CA certificate failed: $(cat "$tmp/err")"
  install -m 0600 "$tmp/ca.key" "$ca_key"
  install -m 0644 "$tmp/ca.pem" "$ca_pem"
  echo "gen-certs: wrote $ca_pem (development CA) and $ca_key"
else
  echo "gen-certs: reusing the CA in $ca_pem"
fi

openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$tmp/node.key" 2>"$tmp/err" \
  || die "node key generation failed: $(cat "$tmp/err")"
openssl req -new -key "$tmp/node.key" -subj "/O=berth development/CN=berth-node" \
  -out "$tmp/node.csr" 2>"$tmp/err" || die "node CSR failed: $(cat "$tmp/err")"
cat >"$tmp/node.ext" <<EXT
basicConstraints=critical,CA:false
keyUsage=critical,digitalSignature
extendedKeyUsage=serverAuth
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
subjectAltName=$san_list
EXT
openssl x509 -req -in "$tmp/node.csr" -CA "$ca_pem" -CAkey "$ca_key" -set_serial "$(serial)" \
  -sha256 -days 825 -extfile "$tmp/node.ext" -out "$tmp/node.pem" 2>"$tmp/err" \
  || die "node certificate failed: $(cat "$tmp/err")"
openssl verify -CAfile "$ca_pem" "$tmp/node.pem" >/dev/null 2>"$tmp/err" \
  || die "the new node certificate does not verify: $(cat "$tmp/err")"
install -m 0600 "$tmp/node.key" "$node_key"
install -m 0644 "$tmp/node.pem" "$node_pem"
echo "gen-certs: wrote $node_pem and $node_key (SAN $san_list)"
