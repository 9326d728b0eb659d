#!/usr/bin/env bash
# promtool and the Prometheus server for the alert tests (tests/unit/test_alerts.py: `promtool
# test rules` on the shipped PrometheusRule; tests/e2e/test_metrics.py: a real server scrapes
# the operator), from Debian's `prometheus` package, unpacked, not installed: nothing runs as a
# service and nothing outside the cache changes.
#
#   NODESYSCTL_CACHE    cache root (default ~/.cache/nodesysctl); the package goes to
#                       $NODESYSCTL_CACHE/prometheus/<upstream version>/ (usr/bin/promtool, ...)
#
# The upstream version is pinned; the Debian revision (`+ds-5+deb12u1`, ...) is left free: it
# moves with security updates and the mirror keeps only the newest. apt checks the file
# against the signed archive. A warm cache runs no apt at all.
set -euo pipefail

UPSTREAM=2.42.0
CACHE_ROOT=${NODESYSCTL_CACHE:-$HOME/.cache/nodesysctl}
DEST=$CACHE_ROOT/prometheus/$UPSTREAM

log() { printf '[prometheus %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [[ -x $DEST/usr/bin/promtool && -x $DEST/usr/bin/prometheus ]]; then
    log "promtool and prometheus $UPSTREAM in $DEST"
    exit 0
fi

candidate() {
    apt-cache madison prometheus 2>/dev/null | awk -v want="$UPSTREAM" '
        { v = $3; sub(/^[0-9]+:/, "", v) }
        index(v, want) == 1 && substr(v, length(want) + 1, 1) ~ /[-+~]/ { print $3; exit }'
}
version=$(candidate)
if [[ -z $version ]]; then
    [[ $(id -u) == 0 ]] || { echo "apt-get update needs root (no prometheus $UPSTREAM known)" >&2; exit 1; }
    apt-get update -qq
    version=$(candidate)
fi
[[ -n $version ]] || { echo "Debian offers no prometheus $UPSTREAM" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
log "downloading prometheus=$version"
# (As root, apt warns that it downloads unsandboxed into a private directory: harmless.)
(cd "$work" && apt-get download -qq "prometheus=$version")
dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
"$work/root/usr/bin/promtool" --version 2>&1 | grep -q "version $UPSTREAM" \
    || { echo "the package's promtool is not $UPSTREAM" >&2; exit 1; }
mkdir -p "$(dirname "$DEST")"
rm -rf "$DEST"
mv "$work/root" "$DEST"
log "unpacked prometheus $version into $DEST"
