"""The boot-order rules (`nodesysctl.agent.bootorder`) and reading the search path from a host
tree (`nodesysctl.agent.bootfiles`). The real systemd-sysctl judges the same kind of trees in
tests/node/test_bootorder_oracle.py."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from nodesysctl.agent import bootfiles
from nodesysctl.agent.bootfiles import read_search_path
from nodesysctl.agent.bootorder import (
    Assignment,
    BootCheck,
    Entry,
    EntryKind,
    Override,
    applied_files,
    check,
    normalize_key,
    parse_assignments,
)
from nodesysctl.agent.hostfs import open_host_dir

RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
RANGE_KEY = "net/ipv4/ip_local_port_range"
RESERVED_KEY = "net/ipv4/ip_local_reserved_ports"
KEYS = (RANGE_KEY, RESERVED_KEY)
OURS = "/etc/sysctl.d/zz-nodesysctl-p.conf"
OUR_TEXT = f"# Managed by nodesysctl\n{RANGE} = 32768 60999\n{RESERVED} = 10250,30000-32767\n"


def allowed_range(value: str | None) -> bool:
    """The policy allows exactly the kernel default range or narrower (value None: default)."""
    if value is None:
        return True
    try:
        lo, hi = (int(v) for v in value.split())
    except ValueError:
        return True  # the kernel refuses it: the default stays
    return 32768 <= lo <= hi <= 60999


def has_nodeports(value: str | None) -> bool:
    return value is not None and "30000-32767" in value


ACCEPTABLE: dict[str, Callable[[str | None], bool]] = {
    RANGE: allowed_range,
    RESERVED: has_nodeports,
}


def write(root: Path, path: str, text: str) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def link(root: Path, path: str, target: str) -> None:
    where = root / path.lstrip("/")
    where.parent.mkdir(parents=True, exist_ok=True)
    where.symlink_to(target)


def ours() -> Entry:
    return Entry(OURS, EntryKind.FILE, parse_assignments(OUR_TEXT, OURS, KEYS))


def boot_check(root: Path) -> BootCheck:
    found = read_search_path(root, KEYS)
    assert found.problems == []
    return check(found.entries, ours(), ACCEPTABLE)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A host root laid out like Debian 12: /lib -> usr/lib, 99-sysctl.conf -> ../sysctl.conf."""
    host = tmp_path / "host"
    (host / "usr" / "lib" / "sysctl.d").mkdir(parents=True)
    (host / "lib").symlink_to("usr/lib")
    write(host, "/etc/sysctl.conf", "#kernel.domainname = example.com\n")
    link(host, "/etc/sysctl.d/99-sysctl.conf", "../sysctl.conf")
    write(host, "/usr/lib/sysctl.d/50-pid-max.conf", "kernel.pid_max = 4194304\n")
    return host


# --- keys and lines -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "normalized"),
    [
        ("net.ipv4.ip_local_port_range", RANGE_KEY),
        ("net/ipv4/ip_local_port_range", RANGE_KEY),
        ("/net/ipv4/ip_local_port_range", RANGE_KEY),
        ("net//ipv4/./ip_local_port_range/", RANGE_KEY),
        # sysctl.d(5): the first separator decides; dots and slashes swap after a dot.
        ("net.ipv4.conf.enp3s0/200.forwarding", "net/ipv4/conf/enp3s0.200/forwarding"),
        ("net/ipv4/conf/enp3s0.200/forwarding", "net/ipv4/conf/enp3s0.200/forwarding"),
        ("net.ipv4/ip_local_port_range", "net/ipv4.ip_local_port_range"),
    ],
)
def test_keys_are_normalised_as_systemd_does(key: str, normalized: str) -> None:
    assert normalize_key(key) == normalized


def test_lines_about_our_keys_are_kept_with_prefixes_globs_and_exclusions() -> None:
    text = "\n".join(
        [
            "# a comment",
            "; another comment",
            "",
            "kernel.pid_max = 4194304",  # another key: cannot change ours
            "  net.ipv4.ip_local_port_range=1024   65000  ",
            "-net/ipv4/ip_local_reserved_ports = 8080",  # "-": failures ignored, still set
            "-net.ipv4.ip_local_port_range",  # no "=": removes the assignment
            "net.ipv4.ip_local_port_range",  # no "=" and no "-": not an assignment
            "net.ipv4.ip_local_*_range = 2000 3000",
            "net.ipv4.*.rp_filter = 2",  # a glob that cannot match our keys
            "net.*.ip_local_port_range.x = 1",
        ]
    )
    assert parse_assignments(text, "/f.conf", KEYS) == (
        Assignment("/f.conf", 5, RANGE_KEY, "1024   65000"),
        Assignment("/f.conf", 6, RESERVED_KEY, "8080"),
        Assignment("/f.conf", 7, RANGE_KEY, None),
        Assignment("/f.conf", 9, "net/ipv4/ip_local_*_range", "2000 3000"),
    )


# --- which files, in which order --------------------------------------------------------------


def test_a_name_counts_only_in_its_highest_priority_directory_then_names_sort() -> None:
    listing = {
        "/usr/lib/sysctl.d": [
            Entry("/usr/lib/sysctl.d/10-a.conf", EntryKind.FILE),
            Entry("/usr/lib/sysctl.d/30-c.conf", EntryKind.FILE),
            Entry("/usr/lib/sysctl.d/README", EntryKind.FILE),
        ],
        "/run/sysctl.d": [Entry("/run/sysctl.d/10-a.conf", EntryKind.FILE)],
        "/etc/sysctl.d": [
            Entry("/etc/sysctl.d/30-c.conf", EntryKind.MASK),
            Entry("/etc/sysctl.d/.hidden.conf", EntryKind.FILE),
        ],
        "/usr/local/lib/sysctl.d": [Entry("/usr/local/lib/sysctl.d/20-b.conf", EntryKind.FILE)],
        "/lib/sysctl.d": [Entry("/lib/sysctl.d/10-a.conf", EntryKind.FILE)],
    }
    assert [e.path for e in applied_files(listing)] == [
        "/run/sysctl.d/10-a.conf",
        "/usr/local/lib/sysctl.d/20-b.conf",
        "/etc/sysctl.d/30-c.conf",
    ]


def test_a_file_read_after_ours_that_widens_the_range_is_an_override(root: Path) -> None:
    write(root, "/etc/sysctl.d/zzz-tuning.conf", f"{RANGE} = 1024 65000\n")
    result = boot_check(root)
    assert result.overrides == (Override("/etc/sysctl.d/zzz-tuning.conf", RANGE, "1024 65000"),)
    assert result.files == (
        "/usr/lib/sysctl.d/50-pid-max.conf",
        "/etc/sysctl.d/99-sysctl.conf",
        OURS,
        "/etc/sysctl.d/zzz-tuning.conf",
    )


def test_a_file_read_before_ours_is_not(root: Path) -> None:
    write(root, "/etc/sysctl.d/50-tuning.conf", f"{RANGE} = 1024 65000\n")
    write(root, "/etc/sysctl.conf", f"{RANGE} = 1024 65000\n{RESERVED} = 8080\n")
    assert boot_check(root).overrides == ()


def test_a_compliant_value_read_after_ours_is_not_an_override(root: Path) -> None:
    # Narrower than allowed, and a reserved list that keeps the NodePorts: still compliant.
    write(root, "/etc/sysctl.d/zzz-a.conf", f"{RANGE} = 40000 50000\n")
    write(root, "/etc/sysctl.d/zzz-b.conf", f"{RESERVED} = 8080,30000-32767\n")
    assert boot_check(root).overrides == ()


def test_debians_link_to_sysctl_conf_is_followed(root: Path) -> None:
    # /etc/sysctl.conf is read through 99-sysctl.conf: before ours. A link that sorts after
    # ours makes its target an override, named by the link (as systemd names it).
    write(root, "/etc/sysctl.conf", f"{RANGE} = 1024 65000\n")
    assert boot_check(root).overrides == ()
    link(root, "/etc/sysctl.d/zzzz-local.conf", "/etc/sysctl.conf")
    assert boot_check(root).overrides == (
        Override("/etc/sysctl.d/zzzz-local.conf", RANGE, "1024 65000"),
    )


def test_a_dev_null_mask_hides_a_vendor_file(root: Path) -> None:
    write(root, "/usr/lib/sysctl.d/zzz-vendor.conf", f"{RESERVED} = 8080\n")
    assert boot_check(root).overrides == (
        Override("/usr/lib/sysctl.d/zzz-vendor.conf", RESERVED, "8080"),
    )
    link(root, "/etc/sysctl.d/zzz-vendor.conf", "/dev/null")
    result = boot_check(root)
    assert result.overrides == ()
    assert "/etc/sysctl.d/zzz-vendor.conf" in result.files


def test_an_empty_file_masks_as_well(root: Path) -> None:
    write(root, "/usr/lib/sysctl.d/zzz-vendor.conf", f"{RESERVED} = 8080\n")
    write(root, "/etc/sysctl.d/zzz-vendor.conf", "")
    assert boot_check(root).overrides == ()


def test_a_file_in_run_overrides_the_same_name_in_usr_lib(root: Path) -> None:
    write(root, "/usr/lib/sysctl.d/zzz-vendor.conf", f"{RANGE} = 40000 50000\n")
    assert boot_check(root).overrides == ()
    write(root, "/run/sysctl.d/zzz-vendor.conf", f"{RANGE} = 1024 65000\n")
    assert boot_check(root).overrides == (
        Override("/run/sysctl.d/zzz-vendor.conf", RANGE, "1024 65000"),
    )


def test_lib_is_read_through_its_link_and_names_are_already_taken(root: Path) -> None:
    write(root, "/usr/lib/sysctl.d/zzz-vendor.conf", f"{RANGE} = 1024 65000\n")
    result = boot_check(root)
    # Once, by its /usr/lib name: /lib/sysctl.d is the same directory on a merged /usr.
    assert result.overrides == (Override("/usr/lib/sysctl.d/zzz-vendor.conf", RANGE, "1024 65000"),)


def test_on_a_split_usr_host_lib_sysctl_d_is_read_last(tmp_path: Path) -> None:
    write(tmp_path, "/lib/sysctl.d/zzz-old.conf", f"{RANGE} = 1024 65000\n")
    found = read_search_path(tmp_path, KEYS)
    assert check(found.entries, ours(), ACCEPTABLE).overrides == (
        Override("/lib/sysctl.d/zzz-old.conf", RANGE, "1024 65000"),
    )


def test_the_last_assignment_decides_and_every_bad_one_after_ours_is_named(root: Path) -> None:
    write(root, "/etc/sysctl.d/zzz-a.conf", f"{RANGE} = 1024 65000\n")
    write(root, "/etc/sysctl.d/zzz-b.conf", f"{RANGE} = 2000 65000\n")
    assert boot_check(root).overrides == (
        Override("/etc/sysctl.d/zzz-a.conf", RANGE, "1024 65000"),
        Override("/etc/sysctl.d/zzz-b.conf", RANGE, "2000 65000"),
    )
    # A later file that sets a compliant value again: nothing undoes the fix.
    write(root, "/etc/sysctl.d/zzz-c.conf", f"{RANGE} = 32768 60999\n")
    assert boot_check(root).overrides == ()


def test_a_later_exclusion_removes_our_assignment(root: Path) -> None:
    write(root, "/etc/sysctl.d/zzz-x.conf", f"-{RESERVED}\n")
    assert boot_check(root).overrides == (Override("/etc/sysctl.d/zzz-x.conf", RESERVED, None),)


def test_globs_never_beat_an_explicit_assignment(root: Path) -> None:
    write(root, "/etc/sysctl.d/zzz-glob.conf", "net.ipv4.ip_local_*_ports = 8080\n")
    assert boot_check(root).overrides == ()


def test_a_file_by_our_name_in_a_higher_directory_replaces_ours(root: Path) -> None:
    # Our file in /usr/lib/sysctl.d (a custom sysctlDir); /etc has the same name.
    theirs = "/etc/sysctl.d/zz-nodesysctl-p.conf"
    write(root, theirs, f"{RANGE} = 1024 65000\n")
    path = "/usr/lib/sysctl.d/zz-nodesysctl-p.conf"
    mine = Entry(path, EntryKind.FILE, parse_assignments(OUR_TEXT, path, KEYS))
    result = check(read_search_path(root, KEYS).entries, mine, ACCEPTABLE)
    assert result.overrides == (
        Override(theirs, RANGE, "1024 65000"),
        Override(theirs, RESERVED, None),
    )


def test_our_directory_must_be_in_the_search_path() -> None:
    elsewhere = Entry("/opt/sysctl/zz.conf", EntryKind.FILE)
    with pytest.raises(ValueError, match="not in the systemd-sysctl search path"):
        check({}, elsewhere, ACCEPTABLE)


# --- reading the host tree --------------------------------------------------------------------


def test_missing_directories_are_empty(tmp_path: Path) -> None:
    found = read_search_path(tmp_path, KEYS)
    assert found.entries == {}
    assert found.problems == []


def test_what_systemd_cannot_read_still_takes_the_name(root: Path) -> None:
    # systemd 252 lists every *.conf entry and then reads it: a dangling link, a directory or a
    # socket applies nothing and hides the vendor file; a FIFO would block, it is not opened.
    write(root, "/usr/lib/sysctl.d/zzz-vendor.conf", f"{RANGE} = 1024 65000\n")
    assert len(boot_check(root).overrides) == 1
    link(root, "/etc/sysctl.d/zzz-vendor.conf", "/etc/missing.conf")
    assert boot_check(root).overrides == ()
    (root / "etc" / "sysctl.d" / "zzz-vendor.conf").unlink()
    (root / "run" / "sysctl.d" / "zzz-vendor.conf").mkdir(parents=True)
    assert boot_check(root).overrides == ()
    local = root / "usr" / "local" / "lib" / "sysctl.d"
    local.mkdir(parents=True)
    os.mkfifo(local / "zzz-fifo.conf", 0o600)
    result = boot_check(root)
    assert result.overrides == ()
    assert [(e.path, e.reason) for e in result.unreadable] == [
        ("/usr/local/lib/sysctl.d/zzz-fifo.conf", "Is a FIFO: not read")
    ]


def test_a_refused_link_is_unreadable_and_reported_never_followed(root: Path) -> None:
    link(root, "/etc/sysctl.d/zzz-secret.conf", "../../../../../proc/self/environ")
    found = read_search_path(root, KEYS)
    result = check(found.entries, ours(), ACCEPTABLE)
    assert result.overrides == ()
    assert [(e.path, e.kind) for e in result.unreadable] == [
        ("/etc/sysctl.d/zzz-secret.conf", EntryKind.UNREADABLE)
    ]
    assert "climbs out of the host root" in result.unreadable[0].reason
    # One sorting before ours cannot change what ours sets: not worth a word.
    link(root, "/etc/sysctl.d/00-secret.conf", "/proc/self/environ")
    assert [e.path for e in boot_check(root).unreadable] == ["/etc/sysctl.d/zzz-secret.conf"]


def test_a_search_directory_linked_out_of_the_host_root_is_a_problem(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (tmp_path / "outside").mkdir()
    write(tmp_path, "/outside/zzz.conf", f"{RANGE} = 1024 65000\n")
    (host / "run").mkdir(parents=True)
    (host / "run" / "sysctl.d").symlink_to("../../../outside")
    found = read_search_path(host, KEYS)
    assert found.entries == {}
    assert len(found.problems) == 1
    assert found.problems[0].startswith("cannot read /run/sysctl.d: ")
    assert "climbs out of the host root" in found.problems[0]


def test_an_absolute_directory_link_stays_in_the_host_root(tmp_path: Path) -> None:
    host = tmp_path / "host"
    write(host, "/usr/lib/sysctl.d/zzz.conf", f"{RANGE} = 1024 65000\n")
    (host / "lib").symlink_to("/usr/lib")  # absolute: the host's /usr/lib, not the pod's
    opened = open_host_dir(host, "/lib/sysctl.d")
    assert opened is not None
    with opened:
        assert opened.host_path == "/usr/lib/sysctl.d"
        assert opened.names(10) == (["zzz.conf"], False)
    assert open_host_dir(host, "/run/sysctl.d") is None


def test_bounds_on_what_is_read(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(5):
        write(root, f"/etc/sysctl.d/zzz-{i}.conf", f"{RANGE} = 1024 65000\n")
    monkeypatch.setattr(bootfiles, "MAX_FILES", 3)
    found = read_search_path(root, KEYS)
    assert any("more than 3 *.conf files" in p for p in found.problems)
    monkeypatch.setattr(bootfiles, "MAX_FILES", 256)
    monkeypatch.setattr(bootfiles, "MAX_DIR_ENTRIES", 2)
    assert any("holds more than 2 entries" in p for p in read_search_path(root, KEYS).problems)
    monkeypatch.setattr(bootfiles, "MAX_DIR_ENTRIES", 4096)
    write(root, "/etc/sysctl.d/zzzz-many.conf", f"{RANGE} = 1024 65000\n" * 65)
    many = check(read_search_path(root, KEYS).entries, ours(), ACCEPTABLE)
    assert [e.path for e in many.unreadable] == ["/etc/sysctl.d/zzzz-many.conf"]
