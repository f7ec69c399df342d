"""Writing the config file: atomically, keeping the versions it replaces.

Every program-made change of the config file (an edit through the API, a signed
remote config, `config rollback`) goes through `save`: the text that is about to
be replaced is kept under `<data_dir>/config-history/`, then the new text is
written to a temporary file beside the config, fsynced and renamed over it, so a
power cut leaves either the old file or the new one, never half of one. The
file's mode is kept (a config holding ENC() values is often 0600).

A kept version is named `<UTC time>-<hash>.<ext>`, the hash being the first 12
hex digits of the text's SHA-256 (the `config.hash` of /api/status); the newest
KEEP_VERSIONS are kept.

A change made by hand is not written here, but the gateway keeps the text it was
running when it reads one (`keep_running`): a file broken by hand, whose reload is
refused, can be rolled back to exactly what runs.
"""

from __future__ import annotations

import calendar
import contextlib
import errno
import hashlib
import os
import stat
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gateway.core.errors import ConfigError

KEEP_VERSIONS = 20
HISTORY_DIR = "config-history"


# How far a certificate or key file is looked at (a PEM chain and its key are a few kB).
PEM_PEEK = 1 << 20


class NotARegularFile(OSError):
    """read_head(regular=True) of a pipe, a device, a folder."""


class NotDurable(OSError):
    """write_atomic: the file WAS replaced, but its folder could not be synced to the disk
    (an I/O error), so a power cut may yet bring back the old one. Not "nothing changed".
    `save` sets `kept`, the version it kept of the text replaced; `edit.edit_file` sets
    `replaced`, that text."""

    kept: Version | None = None
    replaced: str | None = None


def read_head(path: str | os.PathLike[str], limit: int, regular: bool = False) -> bytes:
    """The first `limit` bytes of the file at `path` (OSError if it cannot be read). A
    named pipe with no writer is read as empty, not waited on (the open blocked, and the
    command or the gateway's start hung without a word), and /dev/zero ends at `limit`
    (read whole, it filled the memory). `regular`: anything but a regular file is an
    OSError "not a regular file" (a file OpenSSL opens again itself: a pipe, with a
    writer or not, would hang its open)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with open(fd, "rb") as f:
        if regular and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotARegularFile(errno.EINVAL, "not a regular file")
        os.set_blocking(fd, True)
        return f.read(limit)


Stamp = tuple[int, int, int]


def stamp(path: str | os.PathLike[str]) -> Stamp | None:
    """What tells a changed file: its mtime_ns, size and inode (None: it is missing or
    cannot be looked at). The inode tells a file renamed over it, or a symbolic link moved
    to a new one (as certbot renews), even with the same size and time."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):  # ValueError: a NUL in the path
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


def text_hash(text: str) -> str:
    """The config text's identity: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Version:
    """One kept version of the config file."""

    name: str  # the file name under config-history/, which `config rollback` takes
    path: Path
    saved_at: float  # when it was replaced (seconds since the epoch)
    hash: str


def history_dir(data_dir: str | Path) -> Path:
    return Path(data_dir) / HISTORY_DIR


def write_atomic(path: str | os.PathLike[str], data: str | bytes, mode: int | None = None) -> None:
    """Replace `path` with `data` (text is written as UTF-8): a temp file in the same
    folder, fsync, rename, fsync of the folder, so a crash leaves the old file or the new
    one. The file gets `mode`; without one, the old file's (0600 for a new file). A
    symbolic link stays one: its target is replaced (a config kept in a git checkout and
    linked from /etc was cut off from it by the first edit through the console, every
    later edit of the checkout unseen, and the temp file went to the link's folder).
    What is there and is no regular file is refused, OSError: `web.users_file: /dev/null`
    had `web passwd`, run as root, rename a file over the system's /dev/null."""
    target = Path(os.path.realpath(path))
    try:
        now = target.stat()
    except FileNotFoundError:
        now = None
    if now is not None and not stat.S_ISREG(now.st_mode):
        raise OSError(
            errno.EINVAL,
            "it is not a regular file (a folder, a device, a pipe or a socket), which is"
            " never replaced; give the path of a file",
            str(path),
        )
    if mode is None:
        mode = 0o600 if now is None else now.st_mode & 0o7777
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        os.fchmod(fd, mode)  # before the data: a secret is never readable by others
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as err:
        raise NotDurable(err.errno, err.strerror, str(path)) from err


def unsaved(err: OSError, path: str | Path) -> str:
    """One line for a file an edit or a rollback could not write (a full disk, a folder
    left to root by a command run as root): the file was not changed, nor applied. A
    `NotDurable` error says that the file was changed."""
    if isinstance(err, NotDurable):
        return (
            f"{path}: the file was replaced, but its folder could not be synced to the disk"
            f" ({err.strerror or err}), so a power cut may yet bring back the old text: see"
            " to the disk (dmesg says why)"
        )
    if err.errno == errno.EROFS:  # no room nor permission to see to
        return (
            f"{err.filename or path}: cannot write there: the file system is mounted"
            " read-only (a disk remounted so after errors: dmesg says why); nothing was"
            " changed: mount it read-write, then try again"
        )
    return (
        f"{err.filename or path}: cannot write there ({err.strerror or err}); nothing was"
        " changed: free some space, or let the gateway's user write there"
    )


def put_back(path: str | Path, text: str) -> list[str]:
    """Write `text` back in `path` after the gateway refused (or rolled back) what an
    edit, a rollback or a remote document wrote there. The text is back even when the
    folder's fsync fails (NotDurable, on the disk that failed the first write): that
    returns the line saying so, instead of raising past the caller's settle and answer."""
    try:
        write_atomic(path, text)
    except NotDurable as err:
        return [unsaved(err, path)]
    return []


def keep_version(path: str | Path, data_dir: str | Path) -> Version | None:
    """Copy the config file's current text into config-history/ (None: no file yet);
    `save` then drops the oldest versions beyond KEEP_VERSIONS."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return _keep(text, data_dir, source.suffix)


def _keep(text: str, data_dir: str | Path, suffix: str) -> Version:
    folder = history_dir(data_dir)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    # Named by the time in milliseconds, and after the newest kept: versions are pruned
    # by name, and a board without a clock, set back at boot, named the one it kept
    # older than the rest, which the prune then took at once.
    ms = int(time.time() * 1000)
    newest = versions(data_dir)[:1]
    if newest:
        stem = newest[0].name.rsplit("-", 1)[0].rstrip("Z")
        with contextlib.suppress(ValueError):
            ms = max(ms, int(newest[0].saved_at) * 1000 + int(stem[16:19] or 0) + 1)
    now = ms / 1000
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(ms // 1000)) + f".{ms % 1000:03d}"
    digest = text_hash(text)
    kept = folder / f"{stamp}Z-{digest}{suffix or '.yaml'}"
    write_atomic(kept, text)
    os.chmod(kept, 0o600)
    return Version(kept.name, kept, now, digest)


def keep_running(path: str | Path, text: str, data_dir: str | Path) -> Version | None:
    """Keep `text`, the config the gateway runs, as the newest version, unless the newest
    already is that text (None then): the file at `path` was changed by hand, and the
    text it replaced would be lost with it. Drops the oldest beyond KEEP_VERSIONS."""
    kept = versions(data_dir)
    if kept and kept[0].hash == text_hash(text):
        return None
    version = _keep(text, data_dir, Path(path).suffix)
    _prune(data_dir)
    return version


def _prune(data_dir: str | Path) -> None:
    """Drop the oldest versions beyond KEEP_VERSIONS."""
    for old in versions(data_dir)[KEEP_VERSIONS:]:
        old.path.unlink(missing_ok=True)


def save(path: str | Path, text: str, data_dir: str | Path) -> Version | None:
    """Keep the current text as a version, then write `text` atomically in its place,
    then drop the oldest versions beyond KEEP_VERSIONS. Returns the kept version (None
    when there was no file). A write that fails takes its version back and drops none:
    a config folder that cannot be written must not wear the history away. One that
    failed after the file was replaced (`NotDurable`) keeps it: the text it replaced is
    gone from the file, and `kept` on the error names where it went."""
    try:
        kept = keep_version(path, data_dir)
    except NotDurable as err:  # the copy's folder, not the file: nothing was replaced
        raise OSError(err.errno, err.strerror, err.filename) from err
    try:
        write_atomic(path, text)
    except NotDurable as err:
        err.kept = kept
        _prune(data_dir)
        raise
    except BaseException:
        if kept is not None:
            kept.path.unlink(missing_ok=True)
        raise
    _prune(data_dir)
    return kept


def versions(data_dir: str | Path) -> list[Version]:
    """The kept versions, newest first."""
    folder = history_dir(data_dir)
    if not folder.is_dir():
        return []
    found = []
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not entry.is_file():
            continue
        stem = entry.name.rsplit(".", 1)[0]
        stamp, _, digest = stem.rpartition("-")
        try:
            saved = calendar.timegm(time.strptime(stamp[:15], "%Y%m%dT%H%M%S"))
        except ValueError:
            continue
        found.append(Version(entry.name, entry, saved, digest))
    found.sort(key=lambda v: v.name, reverse=True)
    return found


def find_version(data_dir: str | Path, name: str | None) -> Version:
    """The version called `name` (or whose name or hash starts with it); None: the
    newest. A ConfigError names what exists when none matches, and refuses a start that
    fits versions of different texts (it would pick one of them silently)."""
    kept = versions(data_dir)
    if not kept:
        raise ConfigError(f"no kept config versions under {history_dir(data_dir)}")
    if name is None:
        return kept[0]
    for v in kept:
        if v.name == name:
            return v
    fits = [v for v in kept if name and (v.hash.startswith(name) or v.name.startswith(name))]
    if len({v.hash for v in fits}) > 1:
        raise ConfigError(
            f"{name!r} is the start of {len(fits)} kept config versions of different texts"
            f" ({', '.join(v.name for v in fits[:3])}{', ...' if len(fits) > 3 else ''});"
            " give more of the name or hash (`edge-stream config versions` lists them)"
        )
    if fits:
        return fits[0]  # the newest of the same text
    raise ConfigError(
        f"no kept config version {name!r} under {history_dir(data_dir)};"
        f" `edge-stream config versions` lists them"
    )
