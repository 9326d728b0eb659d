"""The dev cluster's container images, built without Docker or a registry (``make image``).

- **nodesysctl**: the project's one image (operator and agent), the same contract as the
  ``Dockerfile``: a venv in ``/opt/venv`` on ``PATH`` holding exactly ``requirements.lock``
  (``--require-hashes``) plus the project's own wheel, user ``65532:65532``, entrypoint
  ``nodesysctl``, command ``run``. The base differs: Debian bookworm's ``python3`` from
  ``debootstrap --variant=minbase`` (the Dockerfile's is ``python:3.11-slim``), so the venv's
  interpreter is ``/usr/bin/python3`` instead of ``/usr/local/bin/python3.11``.
- **pause**: the sandbox image, one static Go program (``hack/images/pause``).

Both are OCI layouts packed by ``umoci`` and turned into docker archives by ``skopeo``, which
``ctr images import`` loads into a node's containerd. Everything is cached outside the checkout
(``$NODESYSCTL_CACHE/images``) by content hash, in two layers so that changing the project's
code rebuilds only its own small layer: the base (Debian + the locked packages, keyed by the
lock and this recipe) takes ~2.5 min once; the project layer a few seconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .binaries import cache_root

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements.lock"
PAUSE_SOURCE = REPO / "hack" / "images" / "pause"

# Bump when the recipe below changes in a way the hashed inputs do not show.
RECIPE = "1"
SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
# What the image needs from Debian beyond minbase: the interpreter (its venv module included).
DEBIAN_PACKAGES = ("python3",)
# Trimmed from the base: package caches, docs and translations nobody reads in a container.
TRIM = (
    "var/cache/apt",
    "var/lib/apt/lists",
    "usr/share/doc",
    "usr/share/man",
    "usr/share/info",
    "usr/share/locale",
    "var/log",
)

# The image contract, shared with the Dockerfile (tests/unit/test_image.py compares them).
VENV = "/opt/venv"
USER = "65532:65532"
ENTRYPOINT = ("nodesysctl",)
CMD = ("run",)
EXPOSED_PORTS = ("8080/tcp",)
ENV = (
    f"PATH={VENV}/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONDONTWRITEBYTECODE=1",
    "PYTHONUNBUFFERED=1",
    "PIP_NO_CACHE_DIR=1",
    "PIP_DISABLE_PIP_VERSION_CHECK=1",
    "PIP_ROOT_USER_ACTION=ignore",
)
PYTHON_SITE = f"{VENV}/lib/python3.11/site-packages"

REPOSITORY = "localhost/nodesysctl"
NODESYSCTL_NAME = f"{REPOSITORY}/nodesysctl"
PAUSE_NAME = f"{REPOSITORY}/pause"
# The workloads the tests run (devcluster.workloads) name the upstream pause image; real nodes
# get the local one under that name too, so nothing asks a registry for it.
PAUSE_ALIASES = ("registry.k8s.io/pause:3.10",)


class ImageBuildError(RuntimeError):
    pass


@dataclass(frozen=True)
class Image:
    """A docker archive ready for ``ctr images import``, and the names it is known by."""

    ref: str
    archive: Path
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class Images:
    nodesysctl: Image
    pause: Image

    def all(self) -> tuple[Image, ...]:
        return (self.nodesysctl, self.pause)


def images_dir() -> Path:
    return cache_root() / "images"


def _run(argv: Sequence[str | Path], **kwargs: object) -> str:
    proc = subprocess.run(
        [str(a) for a in argv], capture_output=True, text=True, check=False, **kwargs
    )  # type: ignore[call-overload]
    if proc.returncode != 0:
        raise ImageBuildError(
            f"{' '.join(str(a) for a in argv)} failed ({proc.returncode}):\n"
            f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return str(proc.stdout)


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()


def _tree_digest(root: Path, paths: Sequence[Path]) -> bytes:
    """A stable digest of files (relative names and contents), skipping bytecode/egg-info."""
    h = hashlib.sha256()
    for path in sorted(paths):
        rel = path.relative_to(root).as_posix()
        if "__pycache__" in path.parts or ".egg-info" in rel or path.suffix == ".pyc":
            continue
        if path.is_file():
            h.update(rel.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.digest()


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    """One builder at a time per cache entry, across processes (parallel test sessions)."""
    images_dir().mkdir(parents=True, exist_ok=True)
    with (images_dir() / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise ImageBuildError(
            f"{name} not found: run `make node-runtime` (hack/install-node-runtime.sh)"
        )
    return found


def _to_docker_archive(oci: Path, tag: str, ref: str, archive: Path) -> None:
    tmp = archive.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)
    _run([_tool("skopeo"), "copy", "--quiet", f"oci:{oci}:{tag}", f"docker-archive:{tmp}:{ref}"])
    tmp.rename(archive)


# ----------------------------------------------------------------------------------- pause
def _go() -> str:
    for candidate in (os.environ.get("GO"), shutil.which("go"), "/usr/local/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ImageBuildError("need Go to build the pause image (set GO=/path/to/go)")


def build_pause() -> Image:
    sources = sorted(PAUSE_SOURCE.glob("*"))
    key = _digest(RECIPE.encode(), _tree_digest(PAUSE_SOURCE, sources))[:16]
    ref = f"{PAUSE_NAME}:{key}"
    archive = images_dir() / f"pause-{key}.tar"
    with _locked("pause"):
        if not archive.exists():
            started = time.monotonic()
            with tempfile.TemporaryDirectory(dir=images_dir()) as tmp:
                rootfs = Path(tmp) / "rootfs"
                rootfs.mkdir()
                env = {**os.environ, "CGO_ENABLED": "0"}
                _run([_go(), "build", "-ldflags", "-s -w", "-o", rootfs / "pause", "."],
                     cwd=PAUSE_SOURCE, env=env)  # fmt: skip
                oci = Path(tmp) / "oci"
                umoci = _tool("umoci")
                _run([umoci, "init", "--layout", oci])
                _run([umoci, "new", "--image", f"{oci}:pause"])
                _run([umoci, "insert", "--image", f"{oci}:pause", rootfs / "pause", "/pause"])
                _run([umoci, "config", "--image", f"{oci}:pause", "--config.entrypoint", "/pause",
                      "--config.user", "65535:65535", "--no-history"])  # fmt: skip
                _to_docker_archive(oci, "pause", ref, archive)
            log.info("built the pause image %s in %.1fs", ref, time.monotonic() - started)
            _prune("pause-*.tar", keep=3)
    return Image(ref, _used(archive), PAUSE_ALIASES)


# ----------------------------------------------------------------------------------- nodesysctl
def _lock_key() -> str:
    recipe = json.dumps([RECIPE, SUITE, DEBIAN_PACKAGES, TRIM, ENV, USER, VENV]).encode()
    return _digest(recipe, LOCK.read_bytes())[:16]


def _host_pip(staging: Path) -> None:
    """This interpreter's pip, copied where the chroot sees it (the image holds no pip, like
    the Dockerfile's, which uninstalls it)."""
    import pip

    shutil.copytree(Path(pip.__file__).parent, staging / "pip" / "pip")


def _chroot_pip(rootfs: Path, staging: Path, *args: str) -> None:
    """``pip`` run by the image's own venv interpreter, inside a chroot of ``rootfs``, with
    ``staging`` (pip itself, the wheels) bind-mounted read-only at /mnt."""
    mnt = rootfs / "mnt"
    _run(["mount", "--bind", staging, mnt])
    try:
        _run(["mount", "-o", "remount,bind,ro", mnt])
        _run(["chroot", rootfs, "env", "-i", "PYTHONPATH=/mnt/pip", "PIP_NO_CACHE_DIR=1",
              "PIP_DISABLE_PIP_VERSION_CHECK=1", "PIP_ROOT_USER_ACTION=ignore",
              f"{VENV}/bin/python", "-m", "pip", "--no-input", *args])  # fmt: skip
    finally:
        _run(["umount", mnt])


def _build_base(base: Path) -> None:
    """Debian minbase + python3, the user, the venv and the locked packages, as a rootfs and
    as an OCI layout with that one layer."""
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(dir=images_dir(), prefix=".base-"))
    try:
        rootfs = tmp / "rootfs"
        _run([_tool("debootstrap"), "--variant=minbase", f"--include={','.join(DEBIAN_PACKAGES)}",
              SUITE, rootfs, DEBIAN_MIRROR])  # fmt: skip
        for rel in TRIM:
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        log.info("debootstrap done in %.0fs", time.monotonic() - started)
        _run(["chroot", rootfs, "groupadd", "--system", "--gid", "65532", "nodesysctl"])
        _run(["chroot", rootfs, "useradd", "--system", "--uid", "65532", "--gid", "65532",
              "--no-create-home", "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
              "nodesysctl"])  # fmt: skip
        _run(["chroot", rootfs, "python3", "-m", "venv", "--without-pip", VENV])
        staging = tmp / "staging"
        (staging / "wheels").mkdir(parents=True)
        shutil.copy2(LOCK, staging / "requirements.lock")
        _host_pip(staging)
        _run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
              "--only-binary=:all:", "--require-hashes", "--dest", staging / "wheels",
              "-r", LOCK])  # fmt: skip
        _chroot_pip(rootfs, staging, "install", "--no-index", "--find-links=/mnt/wheels",
                    "--require-hashes", "-r", "/mnt/requirements.lock")  # fmt: skip
        oci = tmp / "oci"
        umoci = _tool("umoci")
        _run([umoci, "init", "--layout", oci])
        _run([umoci, "new", "--image", f"{oci}:base"])
        _run([umoci, "insert", "--image", f"{oci}:base", "--no-history", rootfs, "/"])
        shutil.rmtree(staging)
        tmp.rename(base)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("built the image base %s in %.0fs", base.name, time.monotonic() - started)


def _project_wheel(out: Path) -> Path:
    """The project's wheel, built as tests/unit/test_wheel.py builds it (offline, pinned
    backend), from pyproject.toml and operator/ only."""
    src = out / "src"
    src.mkdir()
    shutil.copy2(REPO / "pyproject.toml", src)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "operator", src / "operator", ignore=ignore)
    _run([sys.executable, "-m", "pip", "wheel", "--quiet", "--disable-pip-version-check",
          "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", out / "wheels",
          src])  # fmt: skip
    (wheel,) = (out / "wheels").glob("nodesysctl-*.whl")
    return wheel


def _project_layer(base_rootfs: Path, wheel_dir: Path, layer: Path) -> None:
    """Install the project's wheel over the base (an overlay, so the base stays as it is),
    then copy exactly the files pip recorded into ``layer``."""
    work = layer.parent / "overlay"
    upper, workdir, merged = work / "upper", work / "work", work / "merged"
    for d in (upper, workdir, merged):
        d.mkdir(parents=True)
    _run(["mount", "-t", "overlay", "overlay", "-o",
          f"lowerdir={base_rootfs},upperdir={upper},workdir={workdir}", merged])  # fmt: skip
    try:
        wheels = [f"/mnt/wheels/{w.name}" for w in (wheel_dir / "wheels").glob("*.whl")]
        _chroot_pip(merged, wheel_dir, "install", "--no-index", "--no-deps", *wheels)
        site = merged / PYTHON_SITE.lstrip("/")
        (record,) = site.glob("nodesysctl-*.dist-info/RECORD")
        for line in record.read_text().splitlines():
            rel = line.split(",")[0]
            source = (site / rel).resolve()
            inside = source.relative_to(merged.resolve())
            target = layer / inside
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)
    finally:
        _run(["umount", merged])
        shutil.rmtree(work, ignore_errors=True)


def _source_digest() -> bytes:
    files = [REPO / "pyproject.toml", *(REPO / "operator").rglob("*")]
    return _tree_digest(REPO, [f for f in files if f.is_file()])


def build_nodesysctl() -> Image:
    base_key = _lock_key()
    base = images_dir() / f"base-{base_key}"
    key = _digest(base_key.encode(), _source_digest())[:16]
    ref = f"{NODESYSCTL_NAME}:{key}"
    archive = images_dir() / f"nodesysctl-{key}.tar"
    with _locked("nodesysctl"):
        if archive.exists():
            _used(base)
            return Image(ref, _used(archive))
        if not base.exists():
            _build_base(base)
        _used(base)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(dir=images_dir()) as tmp_name:
            tmp = Path(tmp_name)
            _project_wheel(tmp)
            _host_pip(tmp)
            layer = tmp / "layer"
            layer.mkdir()
            _project_layer(base / "rootfs", tmp, layer)
            oci = tmp / "oci"
            shutil.copytree(base / "oci", oci, copy_function=os.link)
            umoci = _tool("umoci")
            _run([umoci, "insert", "--image", f"{oci}:base", "--tag", "image", "--no-history",
                  layer, "/"])  # fmt: skip
            config = [umoci, "config", "--image", f"{oci}:image", "--no-history",
                      "--config.user", USER, "--config.entrypoint", ENTRYPOINT[0],
                      "--config.cmd", CMD[0]]  # fmt: skip
            for env in ENV:
                config += ["--config.env", env]
            for port in EXPOSED_PORTS:
                config += ["--config.exposedports", port]
            config += ["--config.label", "org.opencontainers.image.title=nodesysctl"]
            _run(config)
            _to_docker_archive(oci, "image", ref, archive)
        log.info("built %s in %.1fs", ref, time.monotonic() - started)
        _prune("nodesysctl-*.tar", keep=3)
        _prune("base-*", keep=2)
    return Image(ref, archive)


PRUNE_AFTER = 3600.0  # seconds since an entry was last built or used


def _used(path: Path) -> Path:
    """Mark a cache entry as used now (pruning goes by that), and return it."""
    with contextlib.suppress(OSError):
        os.utime(path)
    return path


def _prune(pattern: str, keep: int) -> None:
    """Remove cache entries matching ``pattern`` beyond the ``keep`` most recently used ones,
    if unused for an hour (each code change makes a new ~300 MB archive; another checkout's
    session may be using an older one right now). The caller holds that image's lock."""
    entries = sorted(images_dir().glob(pattern), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        if time.time() - old.stat().st_mtime < PRUNE_AFTER:
            continue
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def build_images() -> Images:
    """Both images, from the cache when their inputs did not change."""
    return Images(nodesysctl=build_nodesysctl(), pause=build_pause())


def image_config(image: Image) -> dict[str, object]:
    """The image's OCI config (``skopeo inspect --config``): user, entrypoint, env, ..."""
    out = _run([_tool("skopeo"), "inspect", "--config", f"docker-archive:{image.archive}"])
    config: dict[str, object] = json.loads(out).get("config", {})
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m devcluster.images``: build (or reuse) both images, print their archives."""
    logging.basicConfig(level=logging.INFO, format="[image %(asctime)s] %(message)s")
    del argv
    started = time.monotonic()
    images = build_images()
    for image in images.all():
        print(f"{image.ref}\t{image.archive}")
    log.info("images ready in %.1fs", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
