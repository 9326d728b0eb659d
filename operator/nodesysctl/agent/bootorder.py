"""What systemd-sysctl would apply at boot for our keys, and which files would undo the fix.

Pure: it works on a listing of the search path (`SearchPath`) that `nodesysctl.agent.bootfiles`
reads through `nodesysctl.agent.hostfs`; nothing here touches a file.

The rules are systemd 252's (sysctl.d(5); src/basic/conf-files.c and src/sysctl/sysctl.c), and
tests/node/test_bootorder_oracle.py runs the real `systemd-sysctl` on the same trees to check
them:

- The directories, highest priority first: /etc/sysctl.d, /run/sysctl.d,
  /usr/local/lib/sysctl.d, /usr/lib/sysctl.d, and /lib/sysctl.d (read by split-usr builds; on
  a merged /usr it is /usr/lib/sysctl.d again, so its names are already taken).
- Only names ending in `.conf` and not starting with `.` count. A name counts only in the
  highest-priority directory that has it, whatever it is there: a mask (a link to /dev/null, a
  device node, an empty file) applies nothing, and so does what fails to read (a dangling link,
  a directory, a socket); a FIFO would be read, blocking boot until someone writes to it.
- The surviving files are read in the order of their names (bytewise, whatever their
  directory). Each `key = value` line replaces the key's earlier assignment; a `-key` line
  without `=` removes it (and keeps globs off the key). Keys use `.` or `/` as separators.
- At the end each explicitly assigned key is written once, with its last value; a glob pattern
  is written only to keys that have no explicit assignment.
- /etc/sysctl.conf is not read by systemd-sysctl at all, only through a link such as Debian's
  /etc/sysctl.d/99-sysctl.conf -> ../sysctl.conf. (procps' `sysctl --system` also reads it,
  last; that is not what boots a systemd node and is not modelled.)
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from fnmatch import fnmatchcase

SEARCH_DIRS = (
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
)
CONF_SUFFIX = ".conf"
_GLOB_CHARS = frozenset("*?[")


class EntryKind(StrEnum):
    FILE = "file"  # a regular file (after links), read
    # A link to /dev/null, a device node, an empty file, or what systemd fails to read (a
    # dangling link, a directory, a socket): applies nothing.
    MASK = "mask"
    UNREADABLE = "unreadable"  # counts by its name, but what it sets is unknown


@dataclass(frozen=True)
class Assignment:
    """One `key = value` line (`value` None: a `-key` line that removes the key)."""

    file: str  # the host path of the file, as named in its directory
    line: int
    key: str  # normalised: `net/ipv4/ip_local_port_range`
    value: str | None

    @property
    def is_glob(self) -> bool:
        return not _GLOB_CHARS.isdisjoint(self.key)


@dataclass(frozen=True)
class Entry:
    """One name in one search directory, as far as boot is concerned."""

    path: str  # host path: /etc/sysctl.d/99-sysctl.conf
    kind: EntryKind
    # FILE: the assignments that can touch the keys asked about (see `parse_assignments`).
    assignments: tuple[Assignment, ...] = ()
    reason: str = ""  # UNREADABLE: why

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)


# Directory host path -> the entries found in it; a directory that is missing is absent or empty.
SearchPath = Mapping[str, Sequence[Entry]]


def counts(name: str) -> bool:
    """Whether systemd-sysctl considers a directory entry by this name at all."""
    return name.endswith(CONF_SUFFIX) and not name.startswith(".")


def normalize_key(key: str) -> str:
    """systemd's `sysctl_normalize`: the key as a path below /proc/sys, without leading slash.

    If the first separator is a dot, dots and slashes are swapped; if it is a slash, both stay.
    Empty and `.` components are dropped, as `path_simplify` does.
    """
    first = next((c for c in key if c in "./"), "")
    if first == ".":
        key = key.translate(str.maketrans("./", "/."))
    return "/".join(part for part in key.split("/") if part not in ("", "."))


def _glob_matches(pattern: str, key: str) -> bool:
    # glob(3) on /proc/sys: a wildcard never matches across a '/'.
    pattern_parts, key_parts = pattern.split("/"), key.split("/")
    return len(pattern_parts) == len(key_parts) and all(
        fnmatchcase(k, p) for p, k in zip(pattern_parts, key_parts, strict=True)
    )


def parse_assignments(text: str, path: str, keys: Iterable[str]) -> tuple[Assignment, ...]:
    """The lines of a sysctl.d file that assign one of `keys` (normalised) or a glob that
    matches one of them. Lines about other keys cannot change what those keys get, so they
    are not kept (a file may be large; only these lines matter here)."""
    wanted = frozenset(keys)
    found: list[Assignment] = []
    for number, raw in enumerate(text.split("\n"), start=1):  # systemd splits on LF only
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        key, equals, value = line.partition("=")
        if equals:
            key = key[1:] if key.startswith("-") else key  # "-": ignore a failure to set it
            assigned: str | None = value.strip()
        elif key.startswith("-"):
            key, assigned = key[1:], None  # "-key": no assignment, and no glob either
        else:
            continue  # systemd: "Line is not an assignment, ignoring"
        normalized = normalize_key(key.strip())
        item = Assignment(path, number, normalized, assigned)
        if normalized in wanted or (
            item.is_glob and any(_glob_matches(normalized, k) for k in wanted)
        ):
            found.append(item)
    return tuple(found)


def applied_files(search_path: SearchPath, dirs: Sequence[str] = SEARCH_DIRS) -> list[Entry]:
    """The entries systemd-sysctl reads, in the order it reads them: for each name the one in
    the highest-priority directory, sorted by name."""
    chosen: dict[str, Entry] = {}
    for directory in dirs:
        for entry in search_path.get(directory, ()):
            if counts(entry.name):
                chosen.setdefault(entry.name, entry)
    return [chosen[name] for name in sorted(chosen, key=os.fsencode)]


@dataclass
class _Options:
    """systemd-sysctl's ordered table of options: key -> its current assignment."""

    table: dict[str, Assignment] = field(default_factory=dict)

    def add(self, item: Assignment) -> None:
        existing = self.table.get(item.key)
        if existing is not None and existing.value == item.value:
            return  # the same value again: systemd keeps the earlier entry, and its place
        self.table.pop(item.key, None)
        self.table[item.key] = item

    def decides(self, key: str) -> Assignment | None:
        """The assignment whose value `key` gets at boot; None when nothing is written to it."""
        explicit = self.table.get(key)
        if explicit is not None:
            return explicit if explicit.value is not None else None
        globs = [
            a
            for a in self.table.values()
            if a.is_glob and a.value is not None and _glob_matches(a.key, key)
        ]
        return globs[-1] if globs else None  # written in table order: the last one stays


def boot_values(
    search_path: SearchPath, keys: Iterable[str], dirs: Sequence[str] = SEARCH_DIRS
) -> dict[str, str | None]:
    """What systemd-sysctl writes to each of `keys` (normalised): the value, or None when it
    writes nothing (the value the kernel booted with stays)."""
    options = _Options()
    for entry in applied_files(search_path, dirs):
        for item in entry.assignments:
            options.add(item)
    return {
        key: None if (decider := options.decides(key)) is None else decider.value for key in keys
    }


@dataclass(frozen=True)
class Override:
    """A file whose setting would replace ours at boot with a value the policy does not allow."""

    file: str
    key: str  # as our file spells it: net.ipv4.ip_local_port_range
    value: str | None  # None: the file removes the key's assignment, or replaces our file whole


@dataclass(frozen=True)
class BootCheck:
    overrides: tuple[Override, ...]
    # Entries read after ours (or in its place) whose content is unknown.
    unreadable: tuple[Entry, ...]
    files: tuple[str, ...]  # the files read, in order (for logs and tests)


# The value a key gets at boot (None: nothing is written, the kernel's default stays) -> whether
# it complies with the policy.
Acceptable = Callable[[str | None], bool]


def check(
    search_path: SearchPath,
    ours: Entry,
    acceptable: Mapping[str, Acceptable],
    dirs: Sequence[str] = SEARCH_DIRS,
) -> BootCheck:
    """Which files would leave one of our keys (dotted, as in `acceptable`) out of policy at
    boot, with our file (`ours`, as it is or will be written) in its place in the search path.

    For a key whose boot value complies nothing is reported, whatever the files say. For one
    that would not: every file read after ours that sets the key to a value the policy does not
    allow (the last of them decides); or, when our file is not read at all because a file by its
    name in a higher-priority directory replaces or masks it, that file.
    """
    directory = posixpath.dirname(ours.path)
    if directory not in dirs:
        raise ValueError(f"{directory} is not in the systemd-sysctl search path")
    entries = [e for e in search_path.get(directory, ()) if e.name != ours.name]
    listing = {**search_path, directory: [ours, *entries]}
    files = applied_files(listing, dirs)
    position = next((i for i, e in enumerate(files) if e.path == ours.path), None)
    replaced_by = None if position is not None else next(e for e in files if e.name == ours.name)
    start = position if position is not None else 0

    options = _Options()
    for entry in files:
        for item in entry.assignments:
            options.add(item)

    overrides: list[Override] = []
    for dotted, ok in acceptable.items():
        key = normalize_key(dotted)
        decider = options.decides(key)
        if ok(None if decider is None else decider.value):
            continue
        if replaced_by is not None:
            value = next((a.value for a in reversed(replaced_by.assignments) if a.key == key), None)
            overrides.append(Override(replaced_by.path, dotted, value))
        later: dict[str, str | None] = {}
        for entry in files[start + 1 :] if position is not None else files:
            for item in entry.assignments:
                if item.key == key and not ok(item.value) and entry is not replaced_by:
                    later[entry.path] = item.value  # the file's last such line
        overrides.extend(Override(path, dotted, value) for path, value in later.items())
    unknown = [
        e
        for i, e in enumerate(files)
        if e.kind is EntryKind.UNREADABLE and (position is None or i > position)
    ]
    return BootCheck(tuple(overrides), tuple(unknown), tuple(e.path for e in files))
