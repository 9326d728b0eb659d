"""Where the control plane binaries are: ``KUBEBUILDER_ASSETS`` first, then the build cache.

``hack/build-controlplane.sh`` (``make controlplane``) fills the cache; see docs/controlplane.md.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.36.3"  # must match hack/controlplane/k8s/go.mod (a test checks it)
BINARY_NAMES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
# Built by the same `make controlplane`, but only real nodes need it: an envtest-style
# KUBEBUILDER_ASSETS directory without it still serves the control plane.
KUBELET = "kubelet"


class BinariesNotFoundError(RuntimeError):
    """The control plane binaries are not built yet."""


def cache_root() -> Path:
    """``$NODESYSCTL_CACHE``, else ``~/.cache/nodesysctl``."""
    configured = os.environ.get("NODESYSCTL_CACHE")
    return Path(configured) if configured else Path.home() / ".cache" / "nodesysctl"


def default_bin_dir() -> Path:
    return cache_root() / "controlplane" / KUBERNETES_VERSION


@dataclass(frozen=True)
class Binaries:
    directory: Path

    def path(self, name: str) -> Path:
        return self.directory / name

    @property
    def etcd(self) -> Path:
        return self.path("etcd")

    @property
    def kube_apiserver(self) -> Path:
        return self.path("kube-apiserver")

    @property
    def kube_controller_manager(self) -> Path:
        return self.path("kube-controller-manager")

    @property
    def kube_scheduler(self) -> Path:
        return self.path("kube-scheduler")

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")

    @property
    def kubelet(self) -> Path:
        """The kubelet beside the control plane binaries, else the one in the build cache
        (``make controlplane`` builds it there when KUBEBUILDER_ASSETS lacks it)."""
        for directory in (self.directory, default_bin_dir()):
            if os.access(directory / KUBELET, os.X_OK):
                return directory / KUBELET
        raise BinariesNotFoundError(
            f"no kubelet in {self.directory} or {default_bin_dir()}; run `make controlplane`"
        )


def _complete(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in BINARY_NAMES)


def candidate_dirs() -> list[Path]:
    dirs = []
    assets = os.environ.get("KUBEBUILDER_ASSETS")
    if assets:
        dirs.append(Path(assets))
    dirs.append(default_bin_dir())
    return dirs


def find_binaries() -> Binaries:
    """The first directory holding all of :data:`BINARY_NAMES`.

    Raises :class:`BinariesNotFoundError` when there is none.
    """
    dirs = candidate_dirs()
    for directory in dirs:
        if _complete(directory):
            return Binaries(directory)
    looked = ", ".join(str(d) for d in dirs)
    raise BinariesNotFoundError(
        f"control plane binaries ({', '.join(BINARY_NAMES)}) not found in {looked}; "
        "run `make controlplane` (or point KUBEBUILDER_ASSETS at a directory that has them)"
    )
