#!/usr/bin/env bash
# gen-keys: CurveZMQ key pairs for the heartbeat channel (with `berth
# keygen`), for local clusters and compose: one for the balancers, one per
# node, and the allowlist directory the balancer reads.
#
#   deploy/gen-keys.sh [--force] [--berth PATH] [OUTDIR] [NODE...]
#
# OUTDIR defaults to ./keys, the nodes to node1 node2 node3. Writes
# OUTDIR/balancer.key + .pub, OUTDIR/NODE.key + .pub for each node, and
# OUTDIR/allow/NODE.pub (the balancer's --curve-allow; the file name pins the id NODE
# to that key, so pass the nodes' --id values). Secret keys are 0600.
# Existing pairs are kept unless --force: running it twice is harmless; a
# node added later only gets its own pair. The `berth` binary is --berth,
# else $BERTH_CLI, else build/shared/berth, else `berth` on PATH.
#   balancer: --curve-secret OUTDIR/balancer.key --curve-allow OUTDIR/allow
#   node:     --curve-secret OUTDIR/NODE.key --balancer-key OUTDIR/balancer.pub
set -euo pipefail

die() { echo "gen-keys: $*" >&2; exit 1; }

force=0
outdir=
berth=${BERTH_CLI:-}
nodes=()
while [ $# -gt 0 ]; do
  case $1 in
    --force) force=1 ;;
    --berth) [ $# -ge 2 ] || die "--berth needs a path"; berth=$2; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) die "unknown option '$1' (usage: $0 [--force] [--berth PATH] [OUTDIR] [NODE...])" ;;
    *) if [ -z "$outdir" ]; then outdir=$1; else nodes+=("$1"); fi ;;
  esac
  shift
done
outdir=${outdir:-keys}
[ ${#nodes[@]} -gt 0 ] || nodes=(node1 node2 node3)
if [ -z "$berth" ]; then
  root=$(cd "$(dirname "$0")/.." && pwd)
  if [ -x "$root/build/shared/berth" ]; then berth=$root/build/shared/berth
  else berth=$(command -v berth || true); fi
fi
[ -n "$berth" ] && [ -x "$berth" ] || die "no berth binary (build first, or pass --berth PATH)"
for n in balancer "${nodes[@]}"; do
  [[ $n =~ ^[A-Za-z0-9._-]{1,64}$ ]] || die "'$n' is not a node name ([A-Za-z0-9._-]{1,64})"
done

# The modes are set, not left to the umask: whoever can write the
# allowlist directory can admit a key of their own.
mkdir -p "$outdir/allow"
chmod 0755 "$outdir" "$outdir/allow"
pair() { # NAME: makes OUTDIR/NAME.key + .pub unless both exist (or --force)
  local base=$outdir/$1
  if [ "$force" = 0 ] && [ -s "$base.key" ] && [ -s "$base.pub" ]; then
    echo "gen-keys: keeping $base.key"
    return 0
  fi
  local args=(keygen --out "$base")
  # --force, or half a pair left over (useless alone): replace it
  if [ "$force" = 1 ] || [ -e "$base.key" ] || [ -e "$base.pub" ]; then args+=(--force); fi
  "$berth" "${args[@]}" | sed 's/^/gen-keys: /' || die "berth keygen --out $base failed"
}
pair balancer
for n in "${nodes[@]}"; do
  pair "$n"
  install -m 0644 "$outdir/$n.pub" "$outdir/allow/$n.pub"
done
echo "gen-keys: $outdir/allow allows ${nodes[*]} (and any other *.pub in it)"
