"""Download a URL once into a cache, resuming partial downloads, with an optional checksum.

    path = fetch("https://.../dogImages.zip", cache_dir)

The file is written to ``<name>.part`` and renamed when complete, so an interrupted download
never looks finished; the next call resumes it with an HTTP Range request where the server
allows. Only http(s) URLs given by the user on the command line are fetched.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.parse
from pathlib import Path

CHUNK = 1 << 20


class DownloadError(Exception):
    """Says which URL failed, why, and what to do."""


def cache_name(url: str) -> str:
    """A readable, collision-free file name for a URL."""
    path = urllib.parse.urlparse(url).path
    base = os.path.basename(path) or "download"
    return f"{hashlib.sha256(url.encode()).hexdigest()[:12]}-{base}"


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(url: str, cache_dir: str | os.PathLike, sha256: str | None = None,
          timeout: float = 60.0, progress: bool = True) -> Path:
    import requests
    from tqdm import tqdm

    if urllib.parse.urlparse(url).scheme not in ("http", "https"):
        raise DownloadError(f"{url}: only http(s) URLs can be downloaded")
    cache = Path(cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    final = cache / cache_name(url)
    if final.is_file():
        _verify(final, sha256, url)
        return final
    part = final.with_name(final.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    try:
        with requests.get(url, stream=True, timeout=timeout, headers=headers) as response:
            if response.status_code == 416:  # the part file is already complete
                response.close()
            else:
                if response.status_code not in (200, 206):
                    raise DownloadError(f"{url}: HTTP {response.status_code} "
                                        f"{response.reason}; check the URL")
                if have and response.status_code == 200:  # no resume support: start over
                    have = 0
                total = response.headers.get("Content-Length")
                total = int(total) + have if total is not None else None
                mode = "ab" if have else "wb"
                with open(part, mode) as fh, tqdm(
                        total=total, initial=have, unit="B", unit_scale=True,
                        desc=final.name, file=sys.stderr,
                        disable=not progress or not sys.stderr.isatty()) as bar:
                    for block in response.iter_content(CHUNK):
                        fh.write(block)
                        bar.update(len(block))
                if total is not None and part.stat().st_size != total:
                    raise DownloadError(f"{url}: connection ended after {part.stat().st_size} "
                                        f"of {total} bytes; run again to resume")
    except requests.RequestException as exc:
        raise DownloadError(f"cannot download {url}: {type(exc).__name__}: {exc}. Check the "
                            f"network (or download it yourself and pass the file)") from None
    _verify(part, sha256, url)
    os.replace(part, final)
    return final


def _verify(path: Path, sha256: str | None, url: str) -> None:
    if sha256 and sha256_of(path) != sha256.lower():
        path.unlink()
        raise DownloadError(f"{url}: checksum mismatch (expected sha256 {sha256}); the "
                            f"corrupt file was removed, run again to download it anew")
