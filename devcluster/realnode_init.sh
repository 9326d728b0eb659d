#!/usr/bin/env bash
# PID 2 of a real node (devcluster/realnode.py), under tini as PID 1, inside the node's own
# network, mount and PID namespaces:
#   nsenter --net=/run/netns/<ns> unshare --mount --propagation slave --pid --fork \
#       --mount-proc --kill-child tini -- bash realnode_init.sh <node dir>
# It gives the node its private mounts, then runs the API relay, containerd and the kubelet
# until one of them exits (then tini, and with it the whole PID namespace, goes too).
set -euo pipefail
D=$1
# shellcheck source=/dev/null
source "$D/node.env"  # KUBELET, CTR, IMAGES (archive=ref[,alias...] ...), RELAY_ADDRESS

log() { printf '[node %s] %s\n' "$(date -u +%H:%M:%S.%N | cut -c1-12)" "$*"; }

# --- private mounts: nothing below leaks to the machine (propagation slave) ---------------
# Per-node runtime state: containerd's shim sockets live in /run/containerd whatever its
# config says; CNI keeps its IPAM and result cache in /var/lib/cni; the pods' netns files go
# to /run/netns; the kubelet's /var/log/containers symlinks would be deleted by other nodes.
for dir in /run/containerd /var/lib/cni /run/netns /var/log; do
    mkdir -p "$dir"
    mount -t tmpfs -o mode=0755,size=64m "node-$dir" "$dir"
done
# The node's own /etc/sysctl.d: what a persisting agent writes, what a reboot applies.
mount --bind "$D/etc/sysctl.d" /etc/sysctl.d
# The kubelet's kernel tuning (vm.overcommit_memory, kernel.panic, ...) would change the
# machine's own values: it reads (and may write) files holding the values it wants instead.
for file in "$D"/proc-sys/*; do
    mount --bind "$file" "/proc/sys/$(basename "$file" | tr . /)"
done
# The node's boot id: a new one at each (simulated) reboot.
mount --bind "$D/boot_id" /proc/sys/kernel/random/boot_id

# --- the API server, reachable from the node and its pods --------------------------------
# The kubernetes Service's ClusterIP inside this network namespace, relayed through a unix
# socket to the API server on the machine's loopback (devcluster.realnode starts that end).
socat "TCP-LISTEN:443,bind=$RELAY_ADDRESS,fork,reuseaddr" "UNIX-CONNECT:$D/apiserver.sock" \
    >>"$D/logs/relay.log" 2>&1 &
log "relay $RELAY_ADDRESS:443 -> $D/apiserver.sock (pid $!)"

containerd --config "$D/containerd/config.toml" >>"$D/logs/containerd.log" 2>&1 &
log "containerd (pid $!)"
for _ in $(seq 1 200); do
    [[ -S $D/containerd.sock ]] && "$CTR" -a "$D/containerd.sock" version >/dev/null 2>&1 && break
    sleep 0.05
done
import_started=$(($(date +%s%N) / 1000000))
import_pids=()
for entry in $IMAGES; do
    archive=${entry%%=*} names=${entry#*=}
    (
        "$CTR" -a "$D/containerd.sock" -n k8s.io images import "$archive" >/dev/null
        IFS=, read -r -a refs <<<"$names"
        for alias in "${refs[@]:1}"; do
            "$CTR" -a "$D/containerd.sock" -n k8s.io images tag --force "${refs[0]}" "$alias" >/dev/null
        done
    ) >>"$D/logs/import.log" 2>&1 &
    import_pids+=($!)
done
for pid in "${import_pids[@]}"; do wait "$pid"; done
log "images imported in $(($(date +%s%N) / 1000000 - import_started)) ms"

# shellcheck disable=SC2086  # KUBELET_ARGS is a list of flags
"$KUBELET" $KUBELET_ARGS >>"$D/logs/kubelet.log" 2>&1 &
log "kubelet (pid $!)"
echo ready >"$D/started"
wait -n
log "a node process exited; stopping the node"
