"""Each SageMaker job's source directory: the container scripts with only that job's
requirements (``spec.JOB_REQUIREMENTS``), so no job installs what another one needs.

The SDK tars a job's source directory into S3 under a key that hashes the directory's absolute
path, and that key is part of the step's cache key: the same scripts must therefore have the
same path on a laptop, in CodeBuild and from any checkout. So each directory is staged,
content-addressed, under a fixed folder (``/tmp/dogbreed-sources/<digest>``), and a folder found
there is reused only when it is ours and holds exactly the expected files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from pipelines import spec


def job_sources(scripts_dir: str, requirements: str | None) -> Path:
    """``scripts_dir`` without its requirements folder, with the job's requirements file (if
    any) as ``requirements.txt``."""
    files = {name: path.read_bytes() for name, path in spec.script_files(scripts_dir).items()
             if name.split("/")[0] != spec.REQUIREMENTS_DIR}
    if requirements:
        files["requirements.txt"] = (Path(scripts_dir) / spec.REQUIREMENTS_DIR /
                                     requirements).read_bytes()
    root = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())
    target = root / "dogbreed-sources" / spec.files_digest(files)[:16]
    if target.is_dir() and not _holds_exactly(target, files):
        if not _ours(target):  # someone else's folder at our name: never upload it
            return _stage(files, Path(tempfile.mkdtemp(prefix="dogbreed-sources-")))
        shutil.rmtree(target)  # tampered with or half-written: stage it again
    if not target.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = _stage(files, Path(tempfile.mkdtemp(prefix=target.name + "-",
                                                      dir=target.parent)))
        try:
            staging.rename(target)
        except OSError:  # another process staged the same content first
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _stage(files: dict[str, bytes], folder: Path) -> Path:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return folder


def _ours(path: Path) -> bool:
    return not hasattr(os, "getuid") or path.stat().st_uid == os.getuid()


def _holds_exactly(folder: Path, files: dict[str, bytes]) -> bool:
    """The folder is ours and holds these files, byte for byte, and nothing else."""
    if not _ours(folder):
        return False
    found = {p.relative_to(folder).as_posix(): p for p in folder.rglob("*") if p.is_file()}
    return found.keys() == files.keys() and all(found[n].read_bytes() == data
                                                for n, data in files.items())
