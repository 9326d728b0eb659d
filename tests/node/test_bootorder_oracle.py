"""The boot-order rules against the real thing: systemd-sysctl itself judges each tree.

`systemd-sysctl` has no `--root` (systemd 252: only `--cat-config`, `--prefix`, `--no-pager`),
so each tree is bind-mounted over the search-path directories in a private mount namespace, in
a fresh network namespace (the two keys are per network namespace), and the real binary applies
it with `--prefix` limited to our two keys; the values the kernel then holds are compared with
`bootorder.boot_values`. The file order is compared with `systemd-analyze --root=<tree>
cat-config sysctl.d`, which does take a root. Root only; trees hold only our two keys.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nodesysctl.agent.bootfiles import read_search_path
from nodesysctl.agent.bootorder import applied_files, boot_values, normalize_key
from nodesysctl.ports import parse_port_range, parse_reserved_ports
from tests.node.conftest import _cannot_run
from tests.node.netns_helpers import netns_unavailable

pytestmark = pytest.mark.netns

RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
KEYS = {RANGE: normalize_key(RANGE), RESERVED: normalize_key(RESERVED)}
# What the namespace holds before systemd-sysctl runs: a value nobody's file sets, so "not
# written" shows.
BEFORE = {RANGE: "20000 20999", RESERVED: "40000"}
SYSTEMD_SYSCTL = next(
    (
        p
        for p in ("/usr/lib/systemd/systemd-sysctl", "/lib/systemd/systemd-sysctl")
        if os.path.exists(p)
    ),
    None,
)
# The host paths each tree directory is mounted over (all must exist, or be made on a tmpfs).
BIND = (
    "etc/sysctl.d",
    "etc/sysctl.conf",
    "run/sysctl.d",
    "usr/local/lib/sysctl.d",
    "usr/lib/sysctl.d",
)

# A tree: host path -> file content, or "-> target" for a symbolic link.
Tree = Mapping[str, str]


def usable() -> None:
    reason = netns_unavailable()
    if reason is None and SYSTEMD_SYSCTL is None:
        reason = "systemd-sysctl is not installed"
    if reason is None:
        missing = [
            p
            for p in ("/etc/sysctl.d", "/etc/sysctl.conf", "/usr/lib/sysctl.d", "/usr/local/lib")
            if not os.path.exists(p)
        ]
        if missing:
            reason = f"no {', '.join(missing)} on this machine to mount the trees over"
    if reason:
        _cannot_run(reason)


def build(root: Path, tree: Tree) -> None:
    """Debian's layout (/lib -> usr/lib, 99-sysctl.conf -> ../sysctl.conf) plus `tree`."""
    for directory in ("etc/sysctl.d", "run/sysctl.d", "usr/local/lib/sysctl.d", "usr/lib/sysctl.d"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    (root / "lib").symlink_to("usr/lib")
    base = {"/etc/sysctl.conf": "# nothing\n", "/etc/sysctl.d/99-sysctl.conf": "-> ../sysctl.conf"}
    for path, content in {**base, **tree}.items():
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        if content.startswith("-> "):
            target.symlink_to(content[3:])
        elif content == "<dir>":
            target.mkdir()
        else:
            target.write_text(content)


def run_systemd_sysctl(root: Path) -> dict[str, str]:
    assert SYSTEMD_SYSCTL is not None
    mounts = []
    for rel in BIND:
        source, target = shlex.quote(str(root / rel)), shlex.quote("/" + rel)
        if rel.startswith("run/"):
            mounts.append("mount -t tmpfs tmpfs /run && mkdir /run/sysctl.d")
        if rel.startswith("usr/local/"):
            mounts.append("mount -t tmpfs tmpfs /usr/local/lib && mkdir /usr/local/lib/sysctl.d")
        mounts.append(f"mount --bind {source} {target}")
    proc = "/proc/sys/net/ipv4"
    script = " && ".join(
        [
            *mounts,
            f"echo {shlex.quote(BEFORE[RANGE])} > {proc}/ip_local_port_range",
            f"echo {BEFORE[RESERVED]} > {proc}/ip_local_reserved_ports",
            # A failed write is part of what is compared; systemd-sysctl's exit code is not.
            f"{{ {SYSTEMD_SYSCTL} --prefix=/net/ipv4/ip_local_port_range "
            f"--prefix=/net/ipv4/ip_local_reserved_ports || true; }}",
            f"cat {proc}/ip_local_port_range {proc}/ip_local_reserved_ports",
        ]
    )
    out = subprocess.run(
        ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-ec", script],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout.splitlines()
    return {RANGE: out[0], RESERVED: out[1] if len(out) > 1 else ""}


def modelled(root: Path) -> dict[str, str]:
    """What the kernel holds after boot according to `bootorder`, as the kernel prints it."""
    found = read_search_path(root, KEYS.values())
    assert found.problems == []
    values = boot_values(found.entries, KEYS.values())
    out = {}
    for dotted, key in KEYS.items():
        value = values[key]
        before = BEFORE[dotted]
        if dotted == RANGE:
            try:
                booted = parse_port_range(before if value is None else value)
            except ValueError:
                booted = parse_port_range(before)  # the kernel refuses the write
            out[dotted] = f"{booted.lo}\t{booted.hi}"
        else:
            try:
                ports = parse_reserved_ports(before if value is None else value)
            except ValueError:
                ports = parse_reserved_ports(before)
            out[dotted] = ",".join(str(r) for r in ports)
    return out


def cat_config_order(root: Path) -> list[str]:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        return []
    run = subprocess.run(
        [analyze, f"--root={root}", "cat-config", "sysctl.d", "--no-pager"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    )
    if run.returncode != 0:  # it fails on what it cannot cat (a dangling link, a directory)
        return []
    out = run.stdout
    prefix = f"# {root}"
    return [line[len(prefix) :] for line in out.splitlines() if line.startswith(prefix)]


def judge(root: Path, tree: Tree) -> None:
    build(root, tree)
    assert modelled(root) == run_systemd_sysctl(root), tree
    order = cat_config_order(root)
    if order:
        found = read_search_path(root, KEYS.values())
        assert [e.path for e in applied_files(found.entries)] == order, tree


OURS = "/etc/sysctl.d/zz-nodesysctl-p.conf"
OUR_FILE = f"{RANGE} = 32768 60999\n{RESERVED} = 10250,30000-32767\n"
WIDE = f"{RANGE} = 1024 65000\n"

CASES: dict[str, Tree] = {
    "ours only": {OURS: OUR_FILE},
    "zzz-tuning after ours wins": {OURS: OUR_FILE, "/etc/sysctl.d/zzz-tuning.conf": WIDE},
    "50-tuning before ours loses": {OURS: OUR_FILE, "/etc/sysctl.d/50-tuning.conf": WIDE},
    "sysctl.conf through 99-sysctl.conf, before ours": {OURS: OUR_FILE, "/etc/sysctl.conf": WIDE},
    "sysctl.conf alone is read through the link": {"/etc/sysctl.conf": WIDE},
    "sysctl.conf without the link is not read": {
        "/etc/sysctl.conf": WIDE,
        "/etc/sysctl.d/99-sysctl.conf": "# no link here\n",
    },
    "a /dev/null mask in /etc hides /usr/lib": {
        "/usr/lib/sysctl.d/zzz-vendor.conf": WIDE,
        "/etc/sysctl.d/zzz-vendor.conf": "-> /dev/null",
        OURS: OUR_FILE,
    },
    "an empty file masks": {
        "/usr/lib/sysctl.d/zzz-vendor.conf": WIDE,
        "/run/sysctl.d/zzz-vendor.conf": "",
        OURS: OUR_FILE,
    },
    "/run overrides /usr/lib by name": {
        OURS: OUR_FILE,
        "/usr/lib/sysctl.d/zzz-vendor.conf": f"{RANGE} = 40000 50000\n",
        "/run/sysctl.d/zzz-vendor.conf": WIDE,
    },
    "/usr/local/lib counts": {OURS: OUR_FILE, "/usr/local/lib/sysctl.d/zzz-local.conf": WIDE},
    "a dangling link takes the name": {
        OURS: OUR_FILE,
        "/usr/lib/sysctl.d/zzz-vendor.conf": WIDE,
        "/etc/sysctl.d/zzz-vendor.conf": "-> /etc/nowhere.conf",
    },
    "a directory takes the name": {
        OURS: OUR_FILE,
        "/usr/lib/sysctl.d/zzz-vendor.conf": WIDE,
        "/etc/sysctl.d/zzz-vendor.conf": "<dir>",
    },
    "'-key' removes our assignment": {OURS: OUR_FILE, "/run/sysctl.d/zzz-x.conf": f"-{RESERVED}\n"},
    "'-key = value' still assigns": {
        OURS: OUR_FILE,
        "/etc/sysctl.d/zzz-x.conf": f"-{RESERVED} = 8080\n",
    },
    "slashes as separators": {
        OURS: OUR_FILE,
        "/etc/sysctl.d/zzz-x.conf": "net/ipv4/ip_local_port_range = 2000 3000\n",
    },
    "a glob never beats an explicit key": {
        OURS: OUR_FILE,
        "/etc/sysctl.d/zzz-glob.conf": "net.ipv4.ip_local_*_range = 2000 3000\n",
    },
    "a glob alone is written": {
        "/etc/sysctl.d/zzz-glob.conf": "net.ipv4.ip_local_*_range = 2000 3000\n"
    },
    "globs in table order, a repeated value keeps its place": {
        "/etc/sysctl.d/a.conf": "net.ipv4.ip_local_*_range = 2000 3000\n",
        "/etc/sysctl.d/b.conf": "net.ipv4.ip_local_port_*e = 4000 5000\n",
        "/etc/sysctl.d/c.conf": "net.ipv4.ip_local_*_range = 2000 3000\n",
    },
    "a value the kernel refuses": {
        OURS: OUR_FILE,
        "/etc/sysctl.d/zzz-x.conf": f"{RANGE} = 65000 1024\n",
    },
    "the last line of a file wins": {
        "/etc/sysctl.d/zzz-x.conf": f"{RANGE} = 2000 3000\n{RANGE} = 4000 5000\n"
    },
    "comments and non-assignments": {
        "/etc/sysctl.d/zzz-x.conf": (
            f"# {RANGE} = 1 2\n; {RANGE} = 3 4\n{RANGE}\n  {RANGE}=2000   3000  \n"
        ),
    },
}


@pytest.mark.parametrize("tree", CASES.values(), ids=CASES.keys())
def test_systemd_sysctl_agrees(tree: Tree, tmp_path: Path) -> None:
    usable()
    judge(tmp_path / "root", tree)


# Random trees: a few names in random directories, each a file of random lines, a mask, an
# empty file or a dangling link.
_NAMES = ["10-a.conf", "50-b.conf", "99-sysctl.conf", "zz-nodesysctl-p.conf", "zzz-c.conf"]
_DIRS = ["/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d"]
_LINES = [
    f"{RANGE} = 2000 3000",
    f"{RANGE} = 32768 60999",
    "net/ipv4/ip_local_port_range = 4000 5000",
    f"-{RANGE}",
    f"{RESERVED} = 8080",
    f"{RESERVED} = 10250,30000-32767",
    f"-{RESERVED} = 9090",
    f"-{RESERVED}",
    "net.ipv4.ip_local_*_range = 6000 7000",
    "net.ipv4.ip_local_*_ports = 7070",
    f"# {RANGE} = 1 1",
]
_CONTENT = st.one_of(
    st.lists(st.sampled_from(_LINES), min_size=1, max_size=4).map(lambda ls: "\n".join(ls) + "\n"),
    st.sampled_from(["-> /dev/null", "", "-> /etc/nowhere.conf", "-> ../sysctl.conf"]),
)
_TREES = st.dictionaries(
    st.tuples(st.sampled_from(_DIRS), st.sampled_from(_NAMES)).map("/".join), _CONTENT, max_size=6
)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tree=_TREES, sysctl_conf=st.lists(st.sampled_from(_LINES), max_size=2))
def test_systemd_sysctl_agrees_on_random_trees(
    tree: dict[str, str], sysctl_conf: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    usable()
    root = tmp_path_factory.mktemp("tree") / "root"
    judge(root, {"/etc/sysctl.conf": "\n".join(sysctl_conf) + "\n", **tree})
