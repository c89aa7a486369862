"""Safe extraction where tarfile has no data filter (Python < 3.11.4, e.g. Debian 12's 3.11.2):
the README's first command unpacks the jobs' code and models with it."""

from __future__ import annotations

import io
import tarfile

import pytest

from breedkit import archives


def archive(tmp_path, *members):
    path = tmp_path / "a.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            if kind == "file":
                info.size = 2
                tar.addfile(info, io.BytesIO(b"ok"))
            else:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
    return path


@pytest.mark.parametrize("has_filter", [True, False])
def test_files_are_extracted_and_escapes_refused_with_or_without_the_data_filter(
        tmp_path, monkeypatch, has_filter):
    monkeypatch.setattr(archives, "HAS_DATA_FILTER", has_filter and archives.HAS_DATA_FILTER)
    good = archive(tmp_path, ("code/train.py", "file"), ("link", "symlink"))
    with tarfile.open(good) as tar:
        try:
            archives.extract(tar, tmp_path / "out")
        except tarfile.TarError:
            assert has_filter  # the data filter refuses a link pointing out; we skip it
    assert (tmp_path / "out" / "code" / "train.py").read_bytes() == b"ok"
    assert not (tmp_path / "out" / "link").is_symlink() or has_filter
    bad = archive(tmp_path, ("../evil.py", "file"))
    with tarfile.open(bad) as tar, pytest.raises(tarfile.TarError):
        archives.extract(tar, tmp_path / "out2")
    assert not (tmp_path / "evil.py").exists()
