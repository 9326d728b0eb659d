"""Reading the host's systemd-sysctl search path for `nodesysctl.agent.bootorder`.

Every directory and file is read through `nodesysctl.agent.hostfs` (links followed inside the
host root only, FIFOs and devices never opened, sizes capped). A missing directory is empty, as
it is for systemd-sysctl. What cannot be read is reported, never fatal: the boot-order check
informs, it does not decide whether the live values are right.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from nodesysctl.agent.bootorder import SEARCH_DIRS, Entry, EntryKind, counts, parse_assignments
from nodesysctl.agent.hostfs import FileKind, HostDir, HostFileError, open_host_dir

log = logging.getLogger(__name__)

# Bounds, so that a directory someone fills cannot stall or exhaust the agent: entries looked at
# per directory, `*.conf` files read in all, lines about our keys kept per file.
MAX_DIR_ENTRIES = 4096
MAX_FILES = 256
MAX_ASSIGNMENTS_PER_FILE = 64


@dataclass(frozen=True)
class SearchPathRead:
    entries: dict[str, list[Entry]]  # directory host path -> its entries
    problems: list[str]  # sentences: what could not be read (the check is incomplete there)


def _entry(files: HostDir, directory: str, name: str, keys: Sequence[str]) -> Entry:
    """What systemd-sysctl makes of one name. Whatever the name is, it takes the name from
    lower directories (systemd 252 lists every `*.conf` entry, then reads it)."""
    path = posixpath.join(directory, name)
    try:
        kind = files.kind(name)
        if kind is FileKind.FIFO:
            # systemd-sysctl would open it and wait for a writer; the agent never opens one.
            return Entry(path, EntryKind.UNREADABLE, reason="Is a FIFO: not read")
        if kind not in (FileKind.REGULAR, FileKind.SYMLINK):
            # A device is "null or empty" (a mask); a directory or a socket fails to read.
            return Entry(path, EntryKind.MASK, reason=f"Is {kind.value}")
        found = files.read(name)
    except (OSError, HostFileError) as exc:
        reason = exc.reason if isinstance(exc, HostFileError) else (exc.strerror or str(exc))
        return Entry(path, EntryKind.UNREADABLE, reason=reason)
    if found.content is None or found.content == "":
        # A link to /dev/null, an empty file, or a dangling link (which fails to read): nothing
        # is applied by this name.
        return Entry(path, EntryKind.MASK)
    assignments = parse_assignments(found.content, path, keys)
    if len(assignments) > MAX_ASSIGNMENTS_PER_FILE:
        reason = f"sets our keys more than {MAX_ASSIGNMENTS_PER_FILE} times: not judged"
        return Entry(path, EntryKind.UNREADABLE, reason=reason)
    return Entry(path, EntryKind.FILE, assignments)


def read_search_path(
    host_root: Path, keys: Iterable[str], dirs: Sequence[str] = SEARCH_DIRS
) -> SearchPathRead:
    """Every `*.conf` entry of the search path `dirs`, with the lines that touch `keys`
    (normalised, see `bootorder.normalize_key`)."""
    wanted = tuple(keys)
    entries: dict[str, list[Entry]] = {}
    problems: list[str] = []
    budget = MAX_FILES
    for directory in dirs:
        try:
            files = open_host_dir(host_root, directory)
        except (OSError, HostFileError) as exc:
            problems.append(f"cannot read {directory}: {exc}")
            continue
        if files is None:
            continue
        with files:
            try:
                names, more = files.names(MAX_DIR_ENTRIES)
            except OSError as exc:
                problems.append(f"cannot list {directory}: {exc.strerror or exc}")
                continue
            if more:
                problems.append(
                    f"{directory} holds more than {MAX_DIR_ENTRIES} entries: the rest not read"
                )
            found: list[Entry] = []
            for name in sorted(n for n in names if counts(n)):
                if budget == 0:
                    problems.append(
                        f"more than {MAX_FILES} *.conf files: {directory}/{name} "
                        "and the rest not read"
                    )
                    break
                budget -= 1
                found.append(_entry(files, directory, name, wanted))
            entries[directory] = found
    for problem in problems:
        log.warning("boot-order check: %s", problem)
    return SearchPathRead(entries, problems)
