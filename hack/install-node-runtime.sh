#!/usr/bin/env bash
# Install (or check) the Debian packages the real nodes of the dev cluster need: containerd,
# runc, the CNI plugins, socat (the node's relay to the API server), tini (the node's init),
# and the image tools (debootstrap, umoci, skopeo). See docs/controlplane.md ("Real nodes").
#
# Upstream versions are pinned; the Debian revision (what follows in `-rev`, `+debNuM`, `+bN`)
# is left free: it moves between the mirror and security updates. A package already installed at its pinned upstream version is left
# alone, so a warm machine runs no apt at all.
set -euo pipefail

# package=upstream version (whatever Debian revision follows it is accepted).
PINS=(
    containerd=1.6.20~ds1
    runc=1.1.5+ds1
    containernetworking-plugins=1.1.1+ds1
    socat=1.7.4.4
    tini=0.19.0
    debootstrap=1.0.128
    umoci=0.4.7+ds
    skopeo=1.9.3+ds1
)

log() { printf '[node-runtime %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

missing=()
for pin in "${PINS[@]}"; do
    pkg=${pin%%=*} want=${pin#*=}
    have=$(dpkg-query -W -f='${Status} ${Version}' "$pkg" 2>/dev/null || true)
    # "install ok installed <epoch:>upstream-revision"
    if [[ $have == "install ok installed "* ]]; then
        version=${have#install ok installed }
        version=${version#*:}
        [[ $version == "$want" || $version == "$want"[-+~]* ]] && continue
        log "$pkg $version installed, $want wanted"
    fi
    missing+=("$pkg=$want*")
done

if ((${#missing[@]} == 0)); then
    log "all of ${PINS[*]%%=*} installed at their pinned versions"
    exit 0
fi
[[ $(id -u) == 0 ]] || { echo "installing ${missing[*]} needs root" >&2; exit 1; }
log "installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
# containerd's package would start a machine-wide containerd under systemd; the dev cluster
# runs its own per node, so don't start services (policy-rc.d), and don't pull recommends.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
trap '((created_policy)) && rm -f "$policy"' EXIT
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
dpkg-query -W -f='${Package} ${Version}\n' "${PINS[@]%%=*}" >&2
