"""Defensive file operations in the host directory the agent has mounted read-write.

The agent runs as root in a privileged pod, and the directory it persists into belongs to the
host: whoever can create a name in it (a link, a FIFO, a device node, a huge file) must not be
able to turn the agent into a writer of some other file, a reader of secrets, or a process that
hangs or runs out of memory. So (see docs/agent.md, "Host files"):

- every operation is relative to one directory file descriptor, opened once with `O_NOFOLLOW`:
  renaming or replacing a component of the directory's path later cannot redirect anything;
- writes and removals never follow a link: the new file is a temp file created with
  `O_CREAT|O_EXCL|O_NOFOLLOW` in the same directory, fsynced and renamed over the name (a rename
  replaces a link itself, never its target); a removal unlinks the name itself. A name that is a
  link, a directory, a FIFO, a socket or a device is refused before anything is done;
- reads follow links the way the host would see them, one link at a time (at most
  `MAX_LINK_HOPS`), inside the host root only: an absolute target means the host's path, under
  the host root as mounted; a link that climbs out of the host root or into /proc, /sys or /dev is
  refused; a link to /dev/null is a mask (sysctl.d(5)) and nothing is read;
- a read opens only what `lstat` says is a regular file, with `O_NONBLOCK|O_NOFOLLOW`, checks the
  opened file again with `fstat`, and reads at most `MAX_FILE_BYTES`.

Errors name host paths (`/etc/sysctl.d/...`), not the container's mount path: that is the path
a node's admin can look at. Refusals are `HostFileError`; the kernel's own failures stay `OSError`
(with the host path as their file name) so their reason reads as the kernel put it.
"""

from __future__ import annotations

import errno
import os
import posixpath
import secrets
import stat
from contextlib import suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Self

# The largest file the agent reads. Its own file is a few hundred bytes (a few hundred KB with
# the longest reserved-port list); anything bigger is not one of ours, and must not fill memory.
MAX_FILE_BYTES = 1 << 20
# As the kernel's own limit on links followed in one path lookup.
MAX_LINK_HOPS = 40
# sysctl.d(5): "a symlink to /dev/null ... bearing the same filename" masks a file.
MASK_TARGET = "/dev/null"
# Kernel pseudo filesystems: never configuration, often secrets (/proc/self/environ) or files
# whose read has effects or never ends. A link into them is refused, not followed.
PSEUDO_FS_TOPS = frozenset({"proc", "sys", "dev"})
_TEMP_ATTEMPTS = 16

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: if a FIFO or a device slips in after the lstat, open(2) still returns at once
# and fstat refuses it. (It changes nothing for a regular file's read.) O_NOCTTY: a tty device
# must never become the agent's controlling terminal.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class HostFileError(ValueError):
    """A host file the agent refuses to read, write or remove; `path` is the host's path."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class FileKind(StrEnum):
    MISSING = "missing"
    REGULAR = "a regular file"
    SYMLINK = "a symbolic link"
    DIRECTORY = "a directory"
    FIFO = "a FIFO (named pipe)"
    SOCKET = "a socket"
    CHAR_DEVICE = "a character device"
    BLOCK_DEVICE = "a block device"

    @classmethod
    def of(cls, mode: int) -> FileKind:
        for test, kind in (
            (stat.S_ISREG, cls.REGULAR),
            (stat.S_ISLNK, cls.SYMLINK),
            (stat.S_ISDIR, cls.DIRECTORY),
            (stat.S_ISFIFO, cls.FIFO),
            (stat.S_ISSOCK, cls.SOCKET),
            (stat.S_ISCHR, cls.CHAR_DEVICE),
            (stat.S_ISBLK, cls.BLOCK_DEVICE),
        ):
            if test(mode):
                return kind
        raise ValueError(f"unknown file type {stat.S_IFMT(mode):o}")


@dataclass(frozen=True)
class HostFile:
    """What a read found at one name. `content` is None when the name is missing or masked."""

    path: str  # the host path that was asked for
    content: str | None = None
    masked: bool = False  # a link to /dev/null: sysctl.d(5) applies nothing by this name
    via: str | None = None  # the host path actually read, when links led elsewhere

    @property
    def missing(self) -> bool:
        return self.content is None and not self.masked


def _host_os_error(exc: OSError, path: str) -> OSError:
    """The same error (same errno, same OSError subclass), naming the host path."""
    if exc.errno is None:
        return exc
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), path)


def _kind_refusal(kind: FileKind, st: os.stat_result, doing: str) -> str:
    """Why a name of this kind is refused, as an strerror-like sentence."""
    if kind is FileKind.DIRECTORY:
        return "Is a directory"
    if kind in (FileKind.CHAR_DEVICE, FileKind.BLOCK_DEVICE):
        device = f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}"
        return f"Is {kind.value} ({device}): not {doing}"
    if kind is FileKind.FIFO:
        return f"Is {kind.value}: not {doing} (a read would block until someone writes)"
    return f"Is {kind.value}: not {doing}"


def _check_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{name!r} is not a plain file name")


class HostDir:
    """One host directory, mounted at `path`, with the host's `/` mounted at `host_root`.

    The directory is opened on first use and stays open until `close()`: every later operation
    works on that very directory, whatever happens to the path that named it.
    """

    def __init__(self, path: Path, host_root: Path = Path("/")) -> None:
        self.path = Path(os.path.abspath(path))
        self.host_root = Path(os.path.abspath(host_root))
        try:
            relative = self.path.relative_to(self.host_root)
        except ValueError:
            raise ValueError(f"{self.path} is not inside the host root {self.host_root}") from None
        self.host_path = posixpath.join("/", relative.as_posix()) if relative.parts else "/"
        self._fd: int | None = None

    # --- the directory ------------------------------------------------------------------------

    def host_path_of(self, name: str) -> str:
        return posixpath.join(self.host_path, name)

    def open(self) -> None:
        """Open the directory now (idempotent). Raises FileNotFoundError when it is not there,
        HostFileError when its name is a link or not a directory."""
        if self._fd is not None:
            return
        try:
            self._fd = os.open(self.path, _DIR_FLAGS)
        except FileNotFoundError as exc:
            raise _host_os_error(exc, self.host_path) from exc
        except OSError as exc:
            # O_DIRECTORY|O_NOFOLLOW on a link fails with ENOTDIR (or ELOOP): say what it is.
            if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                raise HostFileError(self.host_path, self._not_a_directory()) from exc
            raise _host_os_error(exc, self.host_path) from exc

    def _not_a_directory(self) -> str:
        try:
            kind = FileKind.of(os.lstat(self.path).st_mode)
            target = os.readlink(self.path) if kind is FileKind.SYMLINK else ""
        except OSError:
            return "Not a directory"
        if kind is FileKind.SYMLINK:
            return f"Is a symbolic link: not followed to a directory; it leads to {target!r}"
        return f"Not a directory (it is {kind.value})"

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _dir_fd(self) -> int:
        self.open()
        assert self._fd is not None
        return self._fd

    # --- one name in the directory, never following it ----------------------------------------

    def kind(self, name: str) -> FileKind:
        """What the name itself is (lstat: a link is a link)."""
        return self._lstat(name)[0]

    def _lstat(self, name: str) -> tuple[FileKind, os.stat_result | None]:
        _check_name(name)
        try:
            st = os.stat(name, dir_fd=self._dir_fd(), follow_symlinks=False)
        except FileNotFoundError:  # the name, or the whole directory
            return FileKind.MISSING, None
        except OSError as exc:
            raise _host_os_error(exc, self.host_path_of(name)) from exc
        return FileKind.of(st.st_mode), st

    def check_replaceable(self, name: str) -> None:
        """Raise HostFileError unless `write(name)` may replace what is there (nothing, or a
        regular file); say what is there instead."""
        kind, st = self._lstat(name)
        if kind in (FileKind.MISSING, FileKind.REGULAR):
            return
        assert st is not None
        if kind is FileKind.SYMLINK:
            raise HostFileError(self.host_path_of(name), self._link_refusal(name, "replaced"))
        raise HostFileError(self.host_path_of(name), _kind_refusal(kind, st, "replaced"))

    def _link_refusal(self, name: str, doing: str) -> str:
        try:
            target = os.readlink(name, dir_fd=self._dir_fd())
        except OSError:
            target = "?"
        # The reason first: results cut long messages, and the target can be long.
        return (
            f"Is a symbolic link: not {doing} (the agent never writes or removes through a "
            f"link); it leads to {target!r}"
        )

    def write(self, name: str, content: str, mode: int = 0o644) -> None:
        """Replace `name` atomically with `content`: a reader (or a crash) sees the old file or
        the new one, never a mix, and a link at `name` is refused, never written through."""
        self.check_replaceable(name)
        host_path = self.host_path_of(name)
        dir_fd = self._dir_fd()
        try:
            temp, fd = self._create_temp(name, dir_fd)
        except OSError as exc:
            raise _host_os_error(exc, host_path) from exc
        try:
            try:
                data = content.encode("utf-8")
                while data:
                    data = data[os.write(fd, data) :]
                os.fchmod(fd, mode)  # independent of the umask; sysctl.d files are world-readable
                os.fsync(fd)
            finally:
                os.close(fd)
            # rename(2) replaces the name itself: if a link appeared there since the check, the
            # link is replaced and its target untouched. Both paths go through
            # /proc/self/fd/<dir fd>, which pins them to the opened directory exactly as
            # renameat(2) with dir_fd would; a plain two-path os.replace is the call the tests
            # (and any caller patching it to inject a failure) expect.
            os.replace(_at(dir_fd, temp), _at(dir_fd, name))
        except BaseException as exc:
            with suppress(OSError):  # the write's own error is the one to report
                os.unlink(temp, dir_fd=dir_fd)
            if isinstance(exc, OSError):
                raise _host_os_error(exc, host_path) from exc
            raise
        self._sync_dir(host_path)

    @staticmethod
    def _create_temp(name: str, dir_fd: int) -> tuple[str, int]:
        for _ in range(_TEMP_ATTEMPTS):
            temp = f".{name}.{secrets.token_hex(6)}.tmp"
            try:
                # O_EXCL|O_NOFOLLOW: a name planted in advance (even a link) is never opened.
                return temp, os.open(temp, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary file name", name)

    def remove(self, name: str) -> bool:
        """Unlink `name` if it is a regular file; False when it is not there. Anything else (a
        link included: it is not a file the agent wrote) is refused and left in place."""
        kind, st = self._lstat(name)
        if kind is FileKind.MISSING:
            return False
        assert st is not None
        host_path = self.host_path_of(name)
        if kind is FileKind.SYMLINK:
            raise HostFileError(host_path, self._link_refusal(name, "removed"))
        if kind is not FileKind.REGULAR:
            raise HostFileError(host_path, _kind_refusal(kind, st, "removed"))
        try:
            # unlinkat(2) removes the name itself, whatever it has become since the lstat.
            os.unlink(name, dir_fd=self._dir_fd())
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise _host_os_error(exc, host_path) from exc
        self._sync_dir(host_path)
        return True

    def _sync_dir(self, host_path: str) -> None:
        """Make a rename or unlink itself durable."""
        try:
            os.fsync(self._dir_fd())
        except OSError as exc:
            raise _host_os_error(exc, host_path) from exc

    def names(self, limit: int) -> tuple[list[str], bool]:
        """At most `limit` names in the directory, in the directory's own order, and whether it
        holds more (a directory anyone can fill must not fill the agent's memory)."""
        names: list[str] = []
        try:
            with os.scandir(self._dir_fd()) as entries:
                for entry in entries:
                    if len(names) == limit:
                        return names, True
                    names.append(entry.name)
        except OSError as exc:
            raise _host_os_error(exc, self.host_path) from exc
        return names, False

    # --- reading, following links inside the host root ----------------------------------------

    def read(self, name: str) -> HostFile:
        """Read `name` as the host would, following links inside the host root only.

        Returns the content, or `missing` (the name, or where its links lead, does not exist),
        or `masked` (a link to /dev/null). Raises HostFileError for what the agent refuses to
        read (a link out of the host root or into /proc, /sys, /dev; a link loop; a directory,
        FIFO, socket or device; more than MAX_FILE_BYTES; not UTF-8) and OSError otherwise.
        """
        _check_name(name)
        path = self.host_path_of(name)
        try:
            self.open()
        except FileNotFoundError:  # no directory: no file either
            return HostFile(path)
        with _Walk(self, path) as walk:
            try:
                found = walk.resolve(name)
            except OSError as exc:
                raise _host_os_error(exc, path) from exc
            if found is None:
                return HostFile(path, masked=walk.masked)
            fd, via = found
            try:
                data = _read_capped(fd, path)
            except OSError as exc:
                raise _host_os_error(exc, path) from exc
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            reason = f"Is not UTF-8 text ({exc.reason} at byte {exc.start})"
            raise HostFileError(path, reason) from None
        return HostFile(path, text, via=None if via == path else via)


def open_host_dir(host_root: Path, host_path: str) -> HostDir | None:
    """The host directory `host_path`, opened, found the way the host would find it: links on
    the way (`/lib -> usr/lib`, or an absolute one) are followed inside the host root only, with
    the same refusals as a read. None when it, or a directory on its way, does not exist.
    Raises HostFileError for a refused link, OSError (naming the host path) otherwise."""
    root = HostDir(host_root, host_root)
    try:
        try:
            root.open()
        except FileNotFoundError:
            return None
        with _Walk(root, host_path) as walk:
            try:
                found = walk.resolve(host_path.lstrip("/") or ".", directory=True)
            except OSError as exc:
                raise _host_os_error(exc, host_path) from exc
    finally:
        root.close()
    if found is None:
        return None
    fd, resolved = found
    opened = HostDir(root.host_root / resolved.lstrip("/"), root.host_root)
    opened._fd = fd
    return opened


def _at(dir_fd: int, name: str) -> str:
    return f"/proc/self/fd/{dir_fd}/{name}"


def _read_capped(fd: int, path: str) -> bytes:
    st = os.fstat(fd)
    kind = FileKind.of(st.st_mode)
    if kind is not FileKind.REGULAR:  # it changed between lstat and open
        raise HostFileError(path, _kind_refusal(kind, st, "read"))
    if st.st_size > MAX_FILE_BYTES:
        raise HostFileError(path, _too_big(st.st_size))
    # The size can lie (a file growing, a pseudo file reporting 0): read one byte past the cap.
    data = bytearray()
    while len(data) <= MAX_FILE_BYTES:
        chunk = os.read(fd, MAX_FILE_BYTES + 1 - len(data))
        if not chunk:
            return bytes(data)
        data += chunk
    raise HostFileError(path, _too_big(None))


def _too_big(size: int | None) -> str:
    limit = f"the {MAX_FILE_BYTES} bytes the agent reads from one file: not read"
    return f"Holds more than {limit}" if size is None else f"Is {size} bytes, larger than {limit}"


@dataclass
class _Level:
    """One directory on the way: its host path and, once opened, its descriptor."""

    host_path: str
    fd: int | None = None


class _Walk:
    """Resolves one name component by component, holding a descriptor for each directory.

    This is what the kernel's path lookup would do with the host root as the root directory,
    except that climbing above the root, entering /proc, /sys or /dev, and more than
    MAX_LINK_HOPS links are refused instead of clamped or followed.
    """

    def __init__(self, hostdir: HostDir, path: str) -> None:
        self.hostdir = hostdir
        self.path = path  # the name asked for, for messages
        self.owned: list[int] = []
        self.masked = False
        # The directory's ancestors, opened only if a `..` climbs to them.
        parts = [p for p in hostdir.host_path.split("/") if p]
        self.stack = [_Level(posixpath.join("/", *parts[:i])) for i in range(len(parts))]
        self.stack.append(_Level(hostdir.host_path, hostdir._dir_fd()))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        for fd in self.owned:
            os.close(fd)

    def _own(self, fd: int) -> int:
        self.owned.append(fd)
        return fd

    def _fd(self, level: _Level) -> int:
        if level.fd is None:
            # An ancestor of the configured directory, or the root: configuration, not host
            # content, so it is opened by its container path as the directory itself was.
            relative = level.host_path.lstrip("/")
            container = self.hostdir.host_root / relative if relative else self.hostdir.host_root
            level.fd = self._own(os.open(container, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        return level.fd

    def _refuse(self, reason: str) -> HostFileError:
        return HostFileError(self.path, reason)

    def resolve(self, name: str, *, directory: bool = False) -> tuple[int, str] | None:
        """An open descriptor of the regular file `name` leads to, and its host path; None
        when it is missing or masked (then `self.masked` says which).

        With `directory`, `name` is a path of directories and the descriptor is the last one's,
        not owned by the walk: the caller closes it.
        """
        # Components still to look up, in reverse order (a stack); `name` is one component, or
        # with `directory` a relative path of them.
        todo = list(reversed(name.split("/")))
        hops = 0
        while todo:
            component = todo.pop()
            if component in ("", "."):
                continue
            if component == "..":
                if len(self.stack) == 1:
                    raise self._refuse("a link on its way climbs out of the host root: not read")
                self.stack.pop()
                continue
            here = self.stack[-1]
            child = posixpath.join(here.host_path, component)
            if len(self.stack) == 1 and component in PSEUDO_FS_TOPS:
                raise self._refuse(
                    f"a link on its way leads into /{component} (a kernel pseudo filesystem, "
                    "not configuration): not read"
                )
            parent_fd = self._fd(here)
            try:
                st = os.stat(component, dir_fd=parent_fd, follow_symlinks=False)
            except FileNotFoundError:
                return None
            kind = FileKind.of(st.st_mode)
            if kind is FileKind.SYMLINK:
                hops += 1
                if hops > MAX_LINK_HOPS:
                    raise self._refuse(
                        f"Too many levels of symbolic links (more than {MAX_LINK_HOPS}): not read"
                    )
                target = os.readlink(component, dir_fd=parent_fd)
                if _lexically(here.host_path, target) == MASK_TARGET:
                    self.masked = True
                    return None
                if target.startswith("/"):
                    del self.stack[1:]
                todo.extend(reversed(target.split("/")))
                continue
            if todo:  # a directory on the way
                if kind is not FileKind.DIRECTORY:
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), child)
                self.stack.append(
                    _Level(child, self._own(os.open(component, _DIR_FLAGS, dir_fd=parent_fd)))
                )
                continue
            if directory:
                if kind is not FileKind.DIRECTORY:
                    raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), child)
                return os.open(component, _DIR_FLAGS, dir_fd=parent_fd), child
            if kind is not FileKind.REGULAR:
                raise self._refuse(_kind_refusal(kind, st, "read"))
            return self._own(os.open(component, _READ_FLAGS, dir_fd=parent_fd)), child
        if directory:  # the path ended in "." or "..", or a link to one
            here = self.stack[-1]
            return os.dup(self._fd(here)), here.host_path
        # The name resolved to a directory (a link to "." or "..").
        raise self._refuse("Is a directory")


def _lexically(directory: str, target: str) -> str:
    """Where a link in `directory` points, by its text alone (for recognizing a mask)."""
    joined = target if target.startswith("/") else posixpath.join(directory, target)
    return "/" + posixpath.normpath(joined).lstrip("/")
