"""The one rule for files opened on behalf of a record: inside an image root, a regular file, of bounded size.

A record names an image by path; the record is untrusted, so the path is resolved (after symlinks) and must lie
inside one of the job's image roots (``--image-root``, repeatable). A path that leaves every root is refused before
the file is touched, with the same answer whether or not it exists, so a rejects file tells nothing about what lies
outside. Only regular files are opened (never a FIFO, a device or a directory), without blocking, and the size is
checked on the open descriptor before a byte is read; reads never go past the limit.
"""

from __future__ import annotations

import argparse
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from urllib.parse import unquote, urlsplit

from medverl.arguments import directory, positive_int

# Larger image files are rejected before they are read: the largest uncompressed scan of the default pixel limit.
DEFAULT_MAX_IMAGE_BYTES = 256 << 20
_PROC_FD = Path("/proc/self/fd")


class FileRefused(ValueError):
    """A file that is not read; `code` is the reject code (outside_image_root, image_not_found, not_a_regular_file,
    image_too_large, image_unreadable), the message the reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def image_roots(roots: str | Path | Iterable[str | Path] | None) -> tuple[Path, ...]:
    """The real paths of the image roots (one path, several, or none)."""
    if roots is None:
        return ()
    if isinstance(roots, str | Path):
        roots = [roots]
    return tuple(Path(os.path.realpath(os.path.expanduser(str(root)))) for root in roots)


def _inside(path: str, root: Path) -> bool:
    return path == str(root) or path.startswith(str(root).rstrip(os.sep) + os.sep)


def confined_path(reference: str, roots: tuple[Path, ...]) -> Path:
    """The real path `reference` names inside one of `roots`; raises :class:`FileRefused` (outside_image_root)
    without touching anything outside a root.

    A relative path is taken from each root in turn (the first under which it exists); ``file://`` URIs are paths;
    ``~`` is not expanded (a record does not name the reader's home directory).
    """
    text = reference
    if text.startswith("file:"):
        text = unquote(urlsplit(text).path)
    if "\0" in text:
        raise FileRefused("outside_image_root", "an image path holds a NUL byte")
    if not roots:
        hint = "relative paths need --image-root" if not os.path.isabs(text) else "pass --image-root"
        raise FileRefused("outside_image_root", f"image path {reference!r} is outside every image root ({hint} "
                          "DIR naming the directory that holds the images; it may be given more than once)")
    candidates = [text] if os.path.isabs(text) else [os.path.join(root, text) for root in roots]
    refused = ""
    for candidate in candidates:
        lexical = os.path.normpath(candidate)
        # Checked before any lookup: "../" and absolute paths out of every root are refused unseen.
        if not any(_inside(lexical, root) for root in roots):
            refused = "outside"
            continue
        real = os.path.realpath(lexical)
        if not any(_inside(real, root) for root in roots):
            refused = "through a symbolic link"
            continue
        if len(candidates) == 1 or os.path.lexists(real):
            return Path(real)
        refused = refused or "missing"
    if refused == "missing":
        raise FileRefused("image_not_found", f"image file not found: {reference} (under {', '.join(map(str, roots))})")
    where = " (it leads there through a symbolic link)" if refused.startswith("through") else ""
    raise FileRefused("outside_image_root", f"image path {reference!r} is outside every image root{where}; "
                      f"image roots: {', '.join(map(str, roots))}")


def read_file(path: str | Path, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, roots: tuple[Path, ...] = ()) -> bytes:
    """The bytes of one regular file of at most `max_bytes`; raises :class:`FileRefused`.

    Opened without following a final symbolic link and without blocking (a FIFO never hangs the job); with `roots`,
    the descriptor's own path is checked against them again (a directory swapped for a link after the check).
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise FileRefused("image_not_found", f"image file not found: {path}") from None
    except OSError as exc:
        raise FileRefused("image_unreadable", f"image file unreadable: {path}: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("not_a_regular_file", f"{path} is not a regular file (a device, FIFO, socket or "
                              "directory); only image files are read")
        if roots and _PROC_FD.is_dir():
            real = os.path.realpath(_PROC_FD / str(fd))
            if not any(_inside(real, root) for root in roots):
                raise FileRefused("outside_image_root", f"image path {path} left every image root while it was opened")
        if info.st_size > max_bytes:
            raise FileRefused("image_too_large", f"{path}: {info.st_size} bytes is over --max-image-bytes "
                              f"{max_bytes}")
        os.set_blocking(fd, True)
        chunks, size = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:  # it grew while being read
                raise FileRefused("image_too_large", f"{path}: more than --max-image-bytes {max_bytes} bytes")
        return b"".join(chunks)
    except OSError as exc:
        raise FileRefused("image_unreadable", f"image file unreadable: {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def read_confined(reference: str, roots: tuple[Path, ...], max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> tuple[bytes, str]:
    """The bytes and real path of the file a record names, under the confinement rule (see the module)."""
    path = confined_path(reference, roots)
    return read_file(path, max_bytes, roots), str(path)


def add_image_arguments(parser: argparse._ActionsContainer) -> None:
    """``--image-root`` and ``--max-image-bytes``: where a record's image files may be read from, and how large."""
    parser.add_argument("--image-root", action="append", default=[], metavar="DIR", type=directory,
                        help="directory image paths must lie in (after symlinks); relative paths are taken from it; "
                        "repeatable. Without it no image file is read (inline base64 still is)")
    parser.add_argument("--max-image-bytes", type=positive_int, default=DEFAULT_MAX_IMAGE_BYTES,
                        help="image files, inline images and parquet image cells larger than this are rejected "
                        "unread; DICOM pixel data that would decode larger is rejected before decoding")
