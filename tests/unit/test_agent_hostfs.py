"""The agent's defensive host file operations (`nodesysctl.agent.hostfs`), on temp trees.

Each test builds a host root (`<tmp>/host`, standing for the host's `/` as mounted) with the
sysctl directory at `<tmp>/host/etc/sysctl.d`, and files that must stay untouched *outside* the
host root in `<tmp>/outside`. Root only where a device node is made.
"""

from __future__ import annotations

import os
import secrets
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nodesysctl.agent import hostfs
from nodesysctl.agent.hostfs import MAX_FILE_BYTES, FileKind, HostDir, HostFile, HostFileError

NAME = "zz-nodesysctl-x.conf"
HOST_PATH = f"/etc/sysctl.d/{NAME}"


@dataclass
class Tree:
    tmp: Path

    @property
    def root(self) -> Path:
        return self.tmp / "host"

    @property
    def dir(self) -> Path:
        return self.root / "etc" / "sysctl.d"

    @property
    def outside(self) -> Path:
        return self.tmp / "outside"

    def hostdir(self) -> HostDir:
        return HostDir(self.dir, self.root)


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(tmp_path)
    t.dir.mkdir(parents=True)
    t.outside.mkdir()
    return t


@pytest.fixture
def files(tree: Tree) -> Iterator[HostDir]:
    with tree.hostdir() as hostdir:
        yield hostdir


def snapshot(path: Path) -> dict[str, tuple[int, bytes | str]]:
    """Every name under `path` with its type and content (or link text)."""
    found: dict[str, tuple[int, bytes | str]] = {}
    for p in sorted(path.rglob("*")):
        mode = p.lstat().st_mode
        if stat.S_ISLNK(mode):
            found[str(p)] = (stat.S_IFMT(mode), os.readlink(p))
        elif stat.S_ISREG(mode):
            found[str(p)] = (stat.S_IFMT(mode), p.read_bytes())
        else:
            found[str(p)] = (stat.S_IFMT(mode), b"")
    return found


# --- paths ------------------------------------------------------------------------------------


def test_host_paths_are_the_hosts_not_the_mounts(tree: Tree, files: HostDir) -> None:
    assert files.host_path == "/etc/sysctl.d"
    assert files.host_path_of(NAME) == HOST_PATH
    assert HostDir(tree.dir).host_path == str(tree.dir)  # the default root is `/`


def test_a_directory_outside_the_host_root_is_a_programming_error(tree: Tree) -> None:
    with pytest.raises(ValueError, match="not inside the host root"):
        HostDir(tree.outside, tree.root)


def test_host_file_error_is_a_value_error_naming_the_host_path(tree: Tree, files: HostDir) -> None:
    (tree.dir / NAME).mkdir()
    with pytest.raises(ValueError, match="Is a directory") as caught:
        files.write(NAME, "x\n")
    assert isinstance(caught.value, HostFileError)
    assert caught.value.path == HOST_PATH
    assert str(caught.value) == f"{HOST_PATH}: Is a directory"
    assert str(tree.tmp) not in str(caught.value)


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../x.conf", "x\0.conf"])
def test_only_plain_names(files: HostDir, name: str) -> None:
    with pytest.raises(ValueError, match="not a plain file name"):
        files.read(name)


# --- writing ----------------------------------------------------------------------------------


def test_a_write_creates_a_world_readable_file_and_leaves_no_temp_file(
    tree: Tree, files: HostDir
) -> None:
    files.write(NAME, "a = 1\n")
    target = tree.dir / NAME
    assert target.read_text() == "a = 1\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    inode = target.stat().st_ino
    files.write(NAME, "a = 2\n")
    assert target.read_text() == "a = 2\n"
    assert target.stat().st_ino != inode  # replaced by a rename, not rewritten in place
    assert [p.name for p in tree.dir.iterdir()] == [NAME]


def test_a_symlink_at_the_name_is_refused_and_not_written_through(
    tree: Tree, files: HostDir
) -> None:
    precious = tree.outside / "shadow"
    precious.write_text("root:secret\n")
    (tree.dir / NAME).symlink_to(precious)
    before = snapshot(tree.tmp)
    with pytest.raises(HostFileError) as caught:
        files.write(NAME, "net.ipv4.ip_forward = 1\n")
    assert caught.value.path == HOST_PATH
    assert caught.value.reason == (
        "Is a symbolic link: not replaced (the agent never writes or removes through a link); "
        f"it leads to {str(precious)!r}"
    )
    assert snapshot(tree.tmp) == before  # the target, the link and the directory as they were


def test_a_dangling_symlink_at_the_name_is_refused_and_nothing_is_created(
    tree: Tree, files: HostDir
) -> None:
    (tree.dir / NAME).symlink_to(tree.outside / "new-file")
    with pytest.raises(HostFileError, match="Is a symbolic link"):
        files.write(NAME, "x\n")
    assert list(tree.outside.iterdir()) == []
    assert (tree.dir / NAME).is_symlink()


def test_a_link_appearing_after_the_check_is_replaced_not_followed(
    tree: Tree, files: HostDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    precious = tree.outside / "shadow"
    precious.write_text("root:secret\n")
    checked = HostDir.check_replaceable

    def check_then_swap(self: HostDir, name: str) -> None:
        checked(self, name)
        (tree.dir / name).symlink_to(precious)  # the race: after the check, before the rename

    monkeypatch.setattr(HostDir, "check_replaceable", check_then_swap)
    files.write(NAME, "mine\n")
    assert precious.read_text() == "root:secret\n"
    assert not (tree.dir / NAME).is_symlink()
    assert (tree.dir / NAME).read_text() == "mine\n"


@pytest.mark.parametrize("kind", ["directory", "fifo", "socket"])
def test_other_kinds_at_the_name_are_refused(
    tree: Tree, files: HostDir, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tree.dir / NAME
    if kind == "directory":
        target.mkdir()
        reason = "Is a directory"
    elif kind == "fifo":
        os.mkfifo(target)
        reason = "Is a FIFO (named pipe): not replaced"
    else:
        monkeypatch.chdir(tree.dir)  # a relative name: socket paths are limited to 108 bytes
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(NAME)
        reason = "Is a socket: not replaced"
    with pytest.raises(HostFileError) as caught:
        files.write(NAME, "x\n")
    assert caught.value.reason.startswith(reason)
    assert {p.name for p in tree.dir.iterdir()} == {NAME}


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
def test_a_device_at_the_name_is_refused(tree: Tree, files: HostDir) -> None:
    os.mknod(tree.dir / NAME, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(HostFileError, match=r"Is a character device \(1:3\): not replaced"):
        files.write(NAME, "x\n")


def test_a_swapped_directory_component_cannot_redirect_a_write(tree: Tree) -> None:
    with tree.hostdir() as files:
        files.open()
        # The directory (and its parent) are renamed away, and links put in their place that
        # lead outside: the open descriptor still means the original directory.
        (tree.root / "etc").rename(tree.root / "etc.old")
        (tree.root / "etc").symlink_to(tree.outside)
        (tree.outside / "sysctl.d").mkdir()
        files.write(NAME, "mine\n")
        assert files.read(NAME).content == "mine\n"
        assert files.remove(NAME)
        files.write(NAME, "again\n")
    assert list((tree.outside / "sysctl.d").iterdir()) == []
    assert (tree.root / "etc.old" / "sysctl.d" / NAME).read_text() == "again\n"


def test_a_symlinked_directory_is_not_opened(tree: Tree) -> None:
    (tree.root / "etc" / "link.d").symlink_to(tree.outside)
    with (
        HostDir(tree.root / "etc" / "link.d", tree.root) as files,
        pytest.raises(
            HostFileError,
            match=r"^/etc/link\.d: Is a symbolic link: not followed to a directory; it leads to '/",
        ),
    ):
        files.write(NAME, "x\n")
    assert list(tree.outside.iterdir()) == []
    (tree.root / "etc" / "file.d").write_text("")
    with (
        HostDir(tree.root / "etc" / "file.d", tree.root) as files,
        pytest.raises(HostFileError, match=r"Not a directory \(it is a regular file\)"),
    ):
        files.open()


def test_a_missing_directory_is_file_not_found_naming_the_host_path(tree: Tree) -> None:
    with HostDir(tree.root / "etc" / "nope.d", tree.root) as files:
        with pytest.raises(FileNotFoundError) as caught:
            files.open()
        assert caught.value.filename == "/etc/nope.d"
        assert files.read(NAME) == HostFile("/etc/nope.d/" + NAME)  # missing, not an error


def test_a_planted_temp_file_name_is_never_opened(
    tree: Tree, files: HostDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(secrets, "token_hex", lambda n: "fixed")
    precious = tree.outside / "shadow"
    precious.write_text("root:secret\n")
    (tree.dir / f".{NAME}.fixed.tmp").symlink_to(precious)
    with pytest.raises(FileExistsError):
        files.write(NAME, "x\n")
    assert precious.read_text() == "root:secret\n"
    assert not (tree.dir / NAME).exists()


def test_a_failed_rename_leaves_the_old_file_and_no_temp_file(
    tree: Tree, files: HostDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tree.dir / NAME).write_text("old\n")

    def replace(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space left on device") as caught:
        files.write(NAME, "new\n")
    assert (caught.value.strerror, caught.value.filename) == ("No space left on device", HOST_PATH)
    assert [p.name for p in tree.dir.iterdir()] == [NAME]
    assert (tree.dir / NAME).read_text() == "old\n"


# --- removing ---------------------------------------------------------------------------------


def test_remove_unlinks_a_regular_file_and_tolerates_a_missing_one(
    tree: Tree, files: HostDir
) -> None:
    (tree.dir / NAME).write_text("x\n")
    assert files.remove(NAME)
    assert not (tree.dir / NAME).exists()
    assert not files.remove(NAME)


def test_remove_refuses_a_link_and_leaves_it_and_its_target(tree: Tree, files: HostDir) -> None:
    precious = tree.outside / "shadow"
    precious.write_text("root:secret\n")
    (tree.dir / NAME).symlink_to(precious)
    with pytest.raises(HostFileError, match=r"^/etc/sysctl\.d/.*: Is a symbolic link: not removed"):
        files.remove(NAME)
    assert (tree.dir / NAME).is_symlink()
    assert precious.read_text() == "root:secret\n"


def test_remove_refuses_a_directory(tree: Tree, files: HostDir) -> None:
    (tree.dir / NAME).mkdir()
    with pytest.raises(HostFileError, match="Is a directory"):
        files.remove(NAME)
    assert (tree.dir / NAME).is_dir()


# --- reading ----------------------------------------------------------------------------------


def test_a_regular_file_is_read(tree: Tree, files: HostDir) -> None:
    (tree.dir / NAME).write_text("a = 1\n")
    assert files.read(NAME) == HostFile(HOST_PATH, "a = 1\n")
    assert files.kind(NAME) is FileKind.REGULAR


def test_a_missing_file_is_missing(files: HostDir) -> None:
    found = files.read(NAME)
    assert found.missing
    assert found.content is None
    assert not found.masked
    assert files.kind(NAME) is FileKind.MISSING


def test_debians_99_sysctl_conf_link_is_followed_inside_the_root(
    tree: Tree, files: HostDir
) -> None:
    (tree.root / "etc" / "sysctl.conf").write_text("net.ipv4.ip_local_port_range = 1024 65000\n")
    (tree.dir / "99-sysctl.conf").symlink_to("../sysctl.conf")
    found = files.read("99-sysctl.conf")
    assert found.content == "net.ipv4.ip_local_port_range = 1024 65000\n"
    assert (found.path, found.via) == ("/etc/sysctl.d/99-sysctl.conf", "/etc/sysctl.conf")


def test_an_absolute_link_means_the_hosts_path_under_the_host_root(
    tree: Tree, files: HostDir
) -> None:
    # Not the container's (or this machine's) /etc/sysctl.conf: the host's, as mounted.
    (tree.root / "etc" / "sysctl.conf").write_text("host's own\n")
    (tree.dir / "99-sysctl.conf").symlink_to("/etc/sysctl.conf")
    assert files.read("99-sysctl.conf").content == "host's own\n"


def test_links_through_linked_directories_resolve_inside_the_root(
    tree: Tree, files: HostDir
) -> None:
    # usrmerge: /lib -> usr/lib; a vendor file reached through it, by an absolute link.
    vendor = tree.root / "usr" / "lib" / "sysctl.d"
    vendor.mkdir(parents=True)
    (vendor / "50-default.conf").write_text("vendor\n")
    (tree.root / "lib").symlink_to("usr/lib")
    (tree.dir / "50-default.conf").symlink_to("/lib/sysctl.d/50-default.conf")
    found = files.read("50-default.conf")
    assert (found.content, found.via) == ("vendor\n", "/usr/lib/sysctl.d/50-default.conf")


def test_a_link_out_of_the_root_is_missing_when_the_mount_does_not_have_it(
    tree: Tree, files: HostDir
) -> None:
    # In the Job only the sysctl directory is mounted: the host's /etc/sysctl.conf is not there.
    (tree.dir / "99-sysctl.conf").symlink_to("../sysctl.conf")
    assert files.read("99-sysctl.conf").missing


@pytest.mark.parametrize(
    ("link", "reason"),
    [
        ("../../../../proc/self/environ", "climbs out of the host root"),
        ("../../../outside/secret", "climbs out of the host root"),
        ("/../../outside/secret", "climbs out of the host root"),
        ("/proc/self/environ", "leads into /proc (a kernel pseudo filesystem"),
        ("../../sys/kernel/notes", "leads into /sys"),
        ("/dev/sda", "leads into /dev"),
    ],
)
def test_a_link_leaving_the_root_or_into_kernel_filesystems_is_refused(
    tree: Tree, files: HostDir, link: str, reason: str
) -> None:
    (tree.outside / "secret").write_text("secret\n")
    (tree.dir / NAME).symlink_to(link)
    with pytest.raises(HostFileError) as caught:
        files.read(NAME)
    assert caught.value.path == HOST_PATH
    assert reason in caught.value.reason
    assert "secret" not in str(caught.value)


def test_an_intermediate_link_leaving_the_root_is_refused(tree: Tree, files: HostDir) -> None:
    (tree.outside / "x.conf").write_text("secret\n")
    (tree.root / "etc" / "vendor").symlink_to("../../outside")  # a directory link out
    (tree.dir / NAME).symlink_to("../vendor/x.conf")
    with pytest.raises(HostFileError, match="climbs out of the host root"):
        files.read(NAME)


@pytest.mark.parametrize("link", ["/dev/null", "../../dev/null", "/dev/./null"])
def test_a_link_to_dev_null_is_a_mask_and_nothing_is_read(
    files: HostDir, tree: Tree, link: str
) -> None:
    (tree.dir / NAME).symlink_to(link)
    found = files.read(NAME)
    assert found.masked
    assert found.content is None
    assert not found.missing


def test_a_link_chain_ending_at_dev_null_is_a_mask(tree: Tree, files: HostDir) -> None:
    (tree.root / "etc" / "masked").symlink_to("/dev/null")
    (tree.dir / NAME).symlink_to("../masked")
    assert files.read(NAME).masked


def test_a_link_loop_is_refused(tree: Tree, files: HostDir) -> None:
    (tree.dir / "a.conf").symlink_to("b.conf")
    (tree.dir / "b.conf").symlink_to("a.conf")
    with pytest.raises(HostFileError, match="Too many levels of symbolic links"):
        files.read("a.conf")


def test_a_directory_is_refused(tree: Tree, files: HostDir) -> None:
    (tree.dir / NAME).mkdir()
    with pytest.raises(HostFileError, match="Is a directory"):
        files.read(NAME)
    (tree.dir / "dot.conf").symlink_to(".")
    with pytest.raises(HostFileError, match="Is a directory"):
        files.read("dot.conf")


def test_a_file_larger_than_the_cap_is_an_error_not_a_read(tree: Tree, files: HostDir) -> None:
    with (tree.dir / NAME).open("wb") as big:
        big.truncate(2 * MAX_FILE_BYTES)  # 2 MiB, sparse
    with pytest.raises(HostFileError) as caught:
        files.read(NAME)
    assert caught.value.reason == (
        f"Is {2 * MAX_FILE_BYTES} bytes, larger than the {MAX_FILE_BYTES} bytes "
        "the agent reads from one file: not read"
    )
    (tree.dir / "exactly.conf").write_bytes(b"#" * MAX_FILE_BYTES)
    assert files.read("exactly.conf").content == "#" * MAX_FILE_BYTES


def test_a_size_that_lies_is_still_capped(
    tree: Tree, files: HostDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file that grows after fstat (or a pseudo file reporting size 0): the read stops.
    (tree.dir / NAME).write_bytes(b"#" * 100)
    monkeypatch.setattr(hostfs, "MAX_FILE_BYTES", 10)
    real_fstat = os.fstat

    def fstat_says_empty(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        return os.stat_result((st.st_mode, *st[1:6], 0, *st[7:]))

    monkeypatch.setattr(os, "fstat", fstat_says_empty)
    with pytest.raises(
        HostFileError, match="Holds more than the 10 bytes the agent reads from one file"
    ):
        files.read(NAME)


@pytest.mark.timeout(5)
def test_a_fifo_is_reported_at_once_never_opened_for_a_blocking_read(
    tree: Tree, files: HostDir
) -> None:
    os.mkfifo(tree.dir / NAME)
    with pytest.raises(HostFileError) as caught:
        files.read(NAME)
    assert caught.value.reason.startswith("Is a FIFO (named pipe): not read")
    os.mkfifo(tree.root / "etc" / "pipe")
    (tree.dir / "via-link.conf").symlink_to("../pipe")
    with pytest.raises(HostFileError, match="Is a FIFO"):
        files.read("via-link.conf")


@pytest.mark.timeout(5)
def test_a_fifo_slipped_in_after_the_lstat_is_refused_by_fstat(tree: Tree) -> None:
    fifo = tree.dir / NAME
    os.mkfifo(fifo)
    fd = os.open(fifo, hostfs._READ_FLAGS)  # O_NONBLOCK: returns at once, no writer needed
    try:
        with pytest.raises(HostFileError, match="Is a FIFO"):
            hostfs._read_capped(fd, HOST_PATH)
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")
@pytest.mark.timeout(5)
def test_a_character_device_is_refused(tree: Tree, files: HostDir) -> None:
    # /dev/null's own numbers, but in the directory: a device node, not a mask (a link).
    os.mknod(tree.dir / NAME, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(HostFileError) as caught:
        files.read(NAME)
    assert caught.value.reason == "Is a character device (1:3): not read"
    assert files.kind(NAME) is FileKind.CHAR_DEVICE


def test_text_that_is_not_utf8_is_refused(tree: Tree, files: HostDir) -> None:
    (tree.dir / NAME).write_bytes(b"a = \xff\n")
    with pytest.raises(HostFileError, match="Is not UTF-8 text"):
        files.read(NAME)


def test_the_kernels_errors_stay_os_errors_naming_the_host_path(tree: Tree, files: HostDir) -> None:
    (tree.dir / "file").write_text("x\n")
    (tree.dir / NAME).symlink_to("file/sub")  # through a regular file
    with pytest.raises(NotADirectoryError) as caught:
        files.read(NAME)
    assert caught.value.filename == HOST_PATH
