#!/usr/bin/env bash
# Build (or reuse) the local control plane used by the integration tests and the demo:
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubectl and the kubelet (for
# the real nodes), compiled from the Go modules pinned in hack/controlplane/{k8s,etcd}/go.mod
# (see docs/controlplane.md).
#
#   KUBEBUILDER_ASSETS  a directory that already holds the five control-plane binaries: build
#                       none of them (and not the kubelet either, if it is there too)
#   NODESYSCTL_CACHE    cache root (default ~/.cache/nodesysctl); binaries go to
#                       $NODESYSCTL_CACHE/controlplane/<k8s version>/
#   GO                  the go command (default: go on PATH, else /usr/local/go/bin/go)
#
# Binaries already in the cache are reused; a missing one is built into a temporary file and
# moved into place, so an interrupted build never leaves a half-written binary behind.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
K8S_MODULE_DIR=$HERE/controlplane/k8s
ETCD_MODULE_DIR=$HERE/controlplane/etcd

# The versions come from the pinned modules, so go.mod is the one place to change them.
K8S_VERSION=$(awk '$1 == "require" && $2 == "k8s.io/kubernetes" {print $3}' "$K8S_MODULE_DIR/go.mod")
ETCD_VERSION=$(awk '$1 == "require" && $2 == "go.etcd.io/etcd/server/v3" {print $3}' "$ETCD_MODULE_DIR/go.mod")
[[ $K8S_VERSION =~ ^v([0-9]+)\.([0-9]+)\.[0-9]+$ ]] || { echo "cannot read k8s.io/kubernetes version from $K8S_MODULE_DIR/go.mod" >&2; exit 1; }
K8S_MAJOR=${BASH_REMATCH[1]}
K8S_MINOR=${BASH_REMATCH[2]}
[[ -n $ETCD_VERSION ]] || { echo "cannot read the etcd version from $ETCD_MODULE_DIR/go.mod" >&2; exit 1; }

CONTROL_PLANE=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)
BINARIES=("${CONTROL_PLANE[@]}" kubelet)
CACHE_ROOT=${NODESYSCTL_CACHE:-$HOME/.cache/nodesysctl}
DEST=$CACHE_ROOT/controlplane/$K8S_VERSION

log() { printf '[controlplane %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

has_all() {  # dir name...
    local dir=$1 name
    shift
    for name in "$@"; do
        [[ -x $dir/$name ]] || return 1
    done
}

# What is already there is not built: the control plane from a complete KUBEBUILDER_ASSETS
# (devcluster.binaries uses it, and its kubelet if it has one), the rest from the cache.
SKIP=()
if [[ -n ${KUBEBUILDER_ASSETS:-} ]]; then
    if has_all "$KUBEBUILDER_ASSETS" "${CONTROL_PLANE[@]}"; then
        SKIP=("${CONTROL_PLANE[@]}")
        has_all "$KUBEBUILDER_ASSETS" kubelet && SKIP+=(kubelet)
        log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS provides ${SKIP[*]}"
        if ((${#SKIP[@]} == ${#BINARIES[@]})); then
            log "nothing to build"
            exit 0
        fi
    else
        log "KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS lacks some of ${CONTROL_PLANE[*]}: using $DEST instead"
    fi
fi

if has_all "$DEST" "${BINARIES[@]}"; then
    log "reusing $DEST (Kubernetes $K8S_VERSION, etcd $ETCD_VERSION)"
    exit 0
fi

# The modules need Go >= the `go` line of their go.mod; a distribution's older `go` on PATH
# loses to /usr/local/go (the official toolchain's place) when that one is new enough.
GO_NEEDED=$(awk '$1 == "go" {print $2}' "$K8S_MODULE_DIR/go.mod")
go_ok() {  # go binary -> is it >= GO_NEEDED?
    local have
    have=$("$1" env GOVERSION 2>/dev/null | sed 's/^go//') || return 1
    [[ -n $have ]] && [[ $(printf '%s\n%s\n' "$GO_NEEDED" "$have" | sort -V | head -1) == "$GO_NEEDED" ]]
}
if [[ -z ${GO:-} ]]; then
    for candidate in "$(command -v go || true)" /usr/local/go/bin/go; do
        if [[ -n $candidate && -x $candidate ]] && go_ok "$candidate"; then GO=$candidate; break; fi
    done
fi
[[ -n ${GO:-} && -x $GO ]] || { echo "need Go >= $GO_NEEDED (set GO=/path/to/go)" >&2; exit 1; }
go_ok "$GO" || { echo "$GO is older than Go $GO_NEEDED, which hack/controlplane needs" >&2; exit 1; }
log "using $("$GO" version) at $GO"

mkdir -p "$DEST"
TMP=$(mktemp -d "$DEST/.build.XXXXXX")
trap 'rm -rf "$TMP"' EXIT

# No -trimpath: the same flags as a plain `go build`, so the Go build cache is shared.
export CGO_ENABLED=0
BUILD_DATE=$(date -u ${SOURCE_DATE_EPOCH:+--date=@$SOURCE_DATE_EPOCH} +%Y-%m-%dT%H:%M:%SZ)
K8S_LDFLAGS="-s -w"
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    K8S_LDFLAGS+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=$K8S_MAJOR"
    K8S_LDFLAGS+=" -X $pkg.gitMinor=$K8S_MINOR -X $pkg.gitTreeState=clean -X $pkg.buildDate=$BUILD_DATE"
done

build_one() {  # name, module dir, package, ldflags
    local name=$1 dir=$2 pkg=$3 ldflags=$4 start
    if [[ " ${SKIP[*]} " == *" $name "* ]]; then
        log "$name: from KUBEBUILDER_ASSETS"
        return
    fi
    if [[ -x $DEST/$name ]]; then
        log "$name: already built"
        return
    fi
    start=$SECONDS
    log "$name: building $pkg (a cold build takes minutes; later builds reuse the Go build cache)"
    (cd "$dir" && "$GO" build -ldflags "$ldflags" -o "$TMP/$name" "$pkg")
    mv -f "$TMP/$name" "$DEST/$name"
    log "$name: done in $((SECONDS - start))s"
}

TOTAL_START=$SECONDS
build_one etcd "$ETCD_MODULE_DIR" go.etcd.io/etcd/server/v3 "-s -w"
for name in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet; do
    build_one "$name" "$K8S_MODULE_DIR" "k8s.io/kubernetes/cmd/$name" "$K8S_LDFLAGS"
done
log "all binaries in $DEST ($((SECONDS - TOTAL_START))s)"
"$DEST/kubelet" --version >&2
"$DEST/etcd" --version | head -1 >&2
