"""Extract tar archives safely on every Python the project supports (3.10+), and judge zip
entry names (``zip_entry_problem``: preprocessing and batch scoring refuse the same ones).

tarfile's ``filter="data"`` (no absolute paths, no ``..``, no links pointing out, no devices)
exists from Python 3.10.12 / 3.11.4 / 3.12 on; Debian 12's Python is 3.11.2, where
``extractall(filter=...)`` is a TypeError. There, the same rules are applied here: only regular
files and folders are extracted, each inside the destination.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path

HAS_DATA_FILTER = hasattr(tarfile, "data_filter")


class UnsafeArchive(tarfile.TarError):
    """A member that would land outside the destination, or is not a file or folder."""


def safe_member(member: tarfile.TarInfo, dest: Path) -> bool:
    """True for a regular file or folder inside ``dest``; False for links, devices and the
    like (skipped); UnsafeArchive for a path that leaves ``dest``."""
    name = member.name
    if os.path.isabs(name) or ".." in Path(name).parts:
        raise UnsafeArchive(f"member {name!r} would be written outside {dest}")
    target = (dest / name).resolve()
    if target != dest.resolve() and dest.resolve() not in target.parents:
        raise UnsafeArchive(f"member {name!r} would be written outside {dest}")
    return member.isfile() or member.isdir()


def extract(tar: tarfile.TarFile, dest: str | os.PathLike,
            members: list[tarfile.TarInfo] | None = None) -> None:
    """``tar.extractall(dest, members, filter="data")``, or its equivalent where the filter is
    missing."""
    dest = Path(dest)
    if HAS_DATA_FILTER:
        tar.extractall(dest, members=members, filter="data")
        return
    for member in members if members is not None else tar.getmembers():
        if safe_member(member, dest):
            member.mode = (member.mode | 0o600) & 0o755  # as the data filter: no set-id bits
            tar.extract(member, dest)


def zip_entry_problem(name: str) -> str | None:
    """Why a zip entry's name is refused: it must be a relative path inside the archive."""
    posix = name.replace("\\", "/")
    if posix.startswith("/") or re.match(r"[A-Za-z]:", posix):
        return ("absolute path in the zip archive: refused (entries must be relative, like "
                "<class>/<image>); re-create the archive from inside the data folder")
    if ".." in posix.split("/"):
        return ("'..' in the path inside the zip archive: refused (it points outside the "
                "archive's folder); re-create the archive from inside the data folder")
    return None
