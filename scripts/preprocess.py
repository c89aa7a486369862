"""Split and resize an image-folder data set (SageMaker Processing contract).

Input (--input-dir, default /opt/ml/processing/data): a folder or a .zip (or a folder holding
one .zip), laid out either
  - already split: train/ valid/ test/ (also val/, validation/), each with <class>/<images>,
    like dogImages (133 folders such as 001.Affenpinscher); a missing valid/ or test/ split is
    carved out of train/; or
  - unsplit: <class>/<images>, split per class by a hash of each image's path under its
    class folder and --seed, so adding or removing images never moves the others (see
    assign_splits), with about --valid-ratio and --test-ratio of each class.
Single wrapper folders (dogImages/...) are looked through; zips are read in place, never
extracted, and __MACOSX/ and hidden files are ignored. Zip entries with an absolute path or a
".." part, and files whose names are not valid UTF-8, are skipped and listed.

Output (--output-dir, default /opt/ml/processing):
  train/ valid/ test/   <class>/<name>.jpg, RGB, shorter side --image-size, EXIF-upright
  manifest/manifest.json  classes in label order, counts per split and class, skipped files with
                          the reason, identical files found in more than one split, parameters,
                          and a fingerprint of the input

Unreadable, truncated, empty and non-image files, and images over --max-image-pixels, are
skipped and reported. The same input and arguments give byte-identical output. Nothing in the
output folder is replaced until the whole run has succeeded.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import shutil
import sys
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from breedkit import archives  # noqa: E402
from breedkit.contract import (UserError, cpu_count, parse_args, run_main,  # noqa: E402
                               setup_logging)
from breedkit.images import (DEFAULT_MAX_PIXELS, ImageDecodeError, open_rgb,  # noqa: E402
                             stored_jpeg)

log = logging.getLogger("preprocess")

SPLITS = ("train", "valid", "test")
SPLIT_ALIASES = {"train": "train", "training": "train", "valid": "valid", "val": "valid",
                 "validation": "valid", "test": "test", "testing": "test"}
MANIFEST_VERSION = 1
IGNORED_DIRS = ("__MACOSX",)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--input-dir", default="/opt/ml/processing/data")
    p.add_argument("--output-dir", default="/opt/ml/processing")
    p.add_argument("--image-size", type=int, default=256,
                   help="shorter side after resizing (0: derived from --crop-size and "
                        "--eval-crop-size, 256 for 224: breedkit.transforms.stored_size)")
    p.add_argument("--crop-size", type=int, default=0,
                   help="the training crop the images are stored for (refused: a stored size "
                        "below it)")
    p.add_argument("--eval-crop-size", type=int, default=0,
                   help="the evaluation crop, when larger than --crop-size")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--valid-ratio", type=float, default=0.1)
    p.add_argument("--test-ratio", type=float, default=0.1)
    p.add_argument("--jpeg-quality", type=int, default=95)
    p.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="larger images are skipped as decompression bombs")
    p.add_argument("--max-file-mb", type=float, default=100.0,
                   help="larger files are skipped without being read")
    p.add_argument("--workers", type=int, default=0, help="processes (0: all cores)")
    return p


# ---------------------------------------------------------------------------------------------
# Reading the input: a folder or a zip, seen as a list of relative POSIX paths.

@dataclass
class Source:
    """Where the images are: ``location`` is a folder or a zip; ``files`` maps the relative
    path under the data root to the name to read (a path in the folder or a zip member)."""

    location: str
    is_zip: bool
    files: dict[str, str] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)  # zip entry -> why it is not read


def _ignored(parts) -> bool:
    return any(part.startswith(".") or part in IGNORED_DIRS for part in parts)


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
        return True
    except UnicodeEncodeError:  # undecodable bytes, kept by the file system layer as surrogates
        return False


def _printable(name: str) -> str:
    """A name whose bytes are not UTF-8, with those bytes as \\xNN (JSON- and log-safe)."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def open_source(input_path: str) -> Source:
    path = Path(input_path)
    if path.is_dir():
        entries = [e for e in path.iterdir() if not _ignored([e.name])]
        zips = [e for e in entries if e.is_file() and e.suffix.lower() == ".zip"]
        if zips and len(entries) == len(zips):
            if len(zips) > 1:
                raise UserError(f"{path} holds several zip files ({', '.join(z.name for z in zips)}"
                                f"); pass one with --input-dir")
            path = zips[0]
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise UserError(f"{path} is neither a folder nor a zip archive")
        source = Source(str(path), True)
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    refused = archives.zip_entry_problem(info.filename)
                    if refused:
                        source.refused[info.filename] = refused
                        continue
                    rel = PurePosixPath(info.filename)
                    if _ignored(rel.parts):
                        continue
                    source.files[str(rel)] = info.filename
                    source.sizes[str(rel)] = info.file_size
        except (zipfile.BadZipFile, OSError) as exc:
            raise UserError(f"cannot read zip archive {path}: {exc}") from None
        except UnicodeDecodeError as exc:  # marked UTF-8 but is not
            raise UserError(f"cannot read zip archive {path}: an entry's name is marked UTF-8 "
                            f"but is not ({exc}); re-create the archive") from None
    elif path.is_dir():
        source = Source(str(path), False)
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames[:] = [d for d in dirnames if not _ignored([d])]
            for name in filenames:
                if _ignored([name]):
                    continue
                full = os.path.join(dirpath, name)
                rel = PurePosixPath(Path(full).relative_to(path).as_posix())
                source.files[str(rel)] = full
                try:
                    source.sizes[str(rel)] = os.path.getsize(full)
                except OSError:
                    source.sizes[str(rel)] = 0
    else:
        raise UserError(f"input {path} does not exist; pass --input-dir with a folder or .zip "
                        f"of images (<class>/<image> or train|valid|test/<class>/<image>)")
    if not source.files and not source.refused:
        raise UserError(f"no files found in {input_path}")
    return source


def strip_wrappers(files: list[str]) -> str:
    """The common prefix made of single wrapper folders (dogImages/ in dogImages.zip)."""
    prefix: list[str] = []
    paths = [PurePosixPath(f).parts for f in files]
    while True:
        depth = len(prefix)
        heads = {p[depth] for p in paths if len(p) > depth + 1}
        files_here = any(len(p) == depth + 1 for p in paths)
        if len(heads) != 1 or files_here:
            return "/".join(prefix)
        head = heads.pop()
        if head.lower() in SPLIT_ALIASES:
            return "/".join(prefix)
        prefix.append(head)


# ---------------------------------------------------------------------------------------------
# Worker: read, check, convert, resize and encode one image.

_WORKER: dict = {}


def _init_worker(location: str, is_zip: bool, staging: str, image_size: int, quality: int,
                 max_pixels: int, max_bytes: int) -> None:
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels  # Pillow's own check agrees with ours
    _WORKER.update(location=location, is_zip=is_zip, staging=staging, size=image_size,
                   quality=quality, max_pixels=max_pixels, max_bytes=max_bytes,
                   zip=zipfile.ZipFile(location) if is_zip else None)


def _process(task: tuple[int, str, int]) -> tuple[int, str, str | None]:
    """-> (index, sha256 of the input bytes, None if written else the reason it was skipped)."""
    index, name, size = task
    w = _WORKER
    if size > w["max_bytes"]:
        return index, "", f"file is {size} bytes, over --max-file-mb"
    try:
        if w["is_zip"]:
            data = w["zip"].read(name)
        else:
            with open(name, "rb") as fh:
                data = fh.read()
    except (OSError, zipfile.BadZipFile, RuntimeError) as exc:
        return index, "", f"cannot read file: {exc}"
    digest = hashlib.sha256(data).hexdigest()
    if not data:
        return index, digest, "empty file (0 bytes)"
    try:
        img = open_rgb(io.BytesIO(data), w["max_pixels"], draft=w["size"])
        stored = stored_jpeg(img, w["size"], w["quality"])
    except ImageDecodeError as exc:
        return index, digest, str(exc)
    except (OSError, ValueError) as exc:  # encoder errors: report, do not crash the run
        return index, digest, f"cannot convert image: {exc}"
    with open(os.path.join(w["staging"], f"{index}.jpg"), "wb") as fh:
        fh.write(stored)
    return index, digest, None


# ---------------------------------------------------------------------------------------------
# Planning: which file goes to which split and class.

@dataclass
class Item:
    rel: str          # path relative to the data root
    name: str         # what to read (path or zip member)
    size: int
    split: str | None  # train/valid/test when the input is already split
    cls: str | None
    reason: str | None = None
    digest: str = ""


def plan_items(source: Source) -> tuple[str, list[Item]]:
    root = strip_wrappers(list(source.files))
    items = []
    for full_rel in sorted(source.files):
        rel = full_rel[len(root) + 1:] if root else full_rel
        items.append(Item(rel, source.files[full_rel], source.sizes.get(full_rel, 0), None, None))
        if not _utf8(rel):
            items[-1].rel = _printable(rel)
            items[-1].reason = ("file name is not valid UTF-8 (shown with its bytes as \\xNN): "
                                "rename it, e.g. convmv -f latin1 -t utf8 -r --notest <folder>")
    items += [Item(name, name, 0, None, None, reason) for name, reason in
              sorted(source.refused.items())]
    tops = {PurePosixPath(i.rel).parts[0] for i in items
            if i.reason is None and len(PurePosixPath(i.rel).parts) > 1}
    presplit = any(SPLIT_ALIASES.get(top.lower()) == "train" for top in tops)
    for item in items:
        if item.reason is not None:
            continue
        parts = PurePosixPath(item.rel).parts
        if presplit:
            split = SPLIT_ALIASES.get(parts[0].lower())
            if split is None:
                item.reason = "outside the train/valid/test folders"
            elif len(parts) < 3:
                item.reason = f"not inside a class folder of {parts[0]}/"
            else:
                item.split, item.cls = split, parts[1]
        elif len(parts) < 2:
            item.reason = "not inside a class folder"
        else:
            item.cls = parts[0]
    return ("presplit" if presplit else "unsplit"), items


def split_bounds(n: int, ratio: float) -> tuple[int, int]:
    """How many of a class's ``n`` images a split with ``ratio`` may hold: at least one when
    ratio > 0, and within two binomial standard deviations of n * ratio (rounded outwards),
    where about 95% of hash draws fall anyway, so corrections (and the moves they cause when
    a class grows) are rare."""
    if ratio <= 0:
        return 0, 0
    expected, sd = n * ratio, math.sqrt(n * ratio * (1 - ratio))
    return max(1, math.floor(expected - 2 * sd)), math.ceil(expected + 2 * sd)


def hash_position(seed: int, path_in_class: str) -> float:
    """Where an image falls in [0, 1): a hash of its path under the class folder and the seed
    (stable across runs, machines, and images added or removed around it)."""
    digest = hashlib.sha256(f"{seed}\0{path_in_class}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def split_class(members: list[Item], positions: dict[str, float], ratios: tuple[float, float]
                ) -> bool:
    """Split one class; False if it is too small to give each split its minimum.

    In hash order, valid takes positions below valid_ratio, test those up to
    valid_ratio + test_ratio, train the rest, so each image's split depends on its own path
    alone. Only where that leaves a split outside ``split_bounds`` (small classes, unlucky
    draws) do the boundaries move, by as few images as bring the counts into bounds."""
    n = len(members)
    (valid_low, valid_high), (test_low, test_high) = (split_bounds(n, r) for r in ratios)
    if valid_low + test_low + 1 > n:
        return False
    ordered = sorted(members, key=lambda i: (positions[i.rel], i.rel))
    natural_valid = sum(1 for i in ordered if positions[i.rel] < ratios[0])
    natural_test = sum(1 for i in ordered if positions[i.rel] < ratios[0] + ratios[1]) - \
        natural_valid
    n_valid = min(max(natural_valid, valid_low), valid_high)
    n_test = min(max(natural_test, test_low), test_high)
    while n_valid + n_test > n - 1:  # leave at least one image to train on
        if n_valid > valid_low and (n_valid - n * ratios[0] >= n_test - n * ratios[1]
                                    or n_test == test_low):
            n_valid -= 1
        else:
            n_test -= 1
    for k, item in enumerate(ordered):
        item.split = "valid" if k < n_valid else "test" if k < n_valid + n_test else "train"
    return True


def assign_splits(items: list[Item], layout: str, seed: int, valid_ratio: float,
                  test_ratio: float) -> None:
    """Give every good item a split: per class, by a stable hash of its path (split_class)."""
    good = [i for i in items if i.reason is None]
    if layout == "presplit":
        present = {i.split for i in good}
        missing = [s for s in ("valid", "test") if s not in present]
        if not missing:
            return
        log.info("input has no %s split: carving it out of train", " or ".join(missing))
        pool = [i for i in good if i.split == "train"]
        ratios = (valid_ratio if "valid" in missing else 0, test_ratio if "test" in missing else 0)
    else:
        pool, ratios = good, (valid_ratio, test_ratio)
    depth = 2 if layout == "presplit" else 1  # <split>/<class>/ or <class>/
    positions = {i.rel: hash_position(seed, "/".join(PurePosixPath(i.rel).parts[depth:]))
                 for i in pool}
    by_class: dict[str, list[Item]] = defaultdict(list)
    for item in pool:
        by_class[item.cls].append(item)
    too_small = []
    for cls in sorted(by_class):
        if not split_class(by_class[cls], positions, ratios):
            needs = sum(split_bounds(len(by_class[cls]), r)[0] for r in ratios) + 1
            too_small.append(f"{cls} ({len(by_class[cls])} usable image(s), needs at least "
                             f"{needs})")
    if too_small:
        raise UserError("too few images to split class " + "; ".join(too_small) +
                        ". Add images, lower --valid-ratio/--test-ratio, or remove the class")


def duplicates_across_splits(items: list[Item]) -> list[dict]:
    """Groups of byte-identical images that ended up in more than one split."""
    by_digest: dict[str, list[Item]] = defaultdict(list)
    for item in items:
        if item.reason is None and item.digest:
            by_digest[item.digest].append(item)
    return [{"sha256": digest,
             "files": [{"file": i.rel, "split": i.split} for i in sorted(group,
                                                                         key=lambda i: i.rel)]}
            for digest, group in sorted(by_digest.items())
            if len({i.split for i in group}) > 1]


def output_names(items: list[Item]) -> dict[int, str]:
    """<split>/<class>/<stem>.jpg, disambiguated deterministically when stems collide."""
    wanted: dict[str, list[int]] = defaultdict(list)
    for idx, item in enumerate(items):
        if item.reason is None:
            stem = PurePosixPath(item.rel).stem
            wanted[f"{item.split}/{item.cls}/{stem}"].append(idx)
    names = {}
    for base, idxs in wanted.items():
        for idx in idxs:
            suffix = ("-" + hashlib.sha256(items[idx].rel.encode()).hexdigest()[:8]
                      if len(idxs) > 1 else "")
            names[idx] = f"{base}{suffix}.jpg"
    return names


# ---------------------------------------------------------------------------------------------

def run_workers(source: Source, items: list[Item], staging: str, args) -> None:
    from tqdm import tqdm

    tasks = [(i, item.name, item.size) for i, item in enumerate(items) if item.reason is None]
    init = (source.location, source.is_zip, staging, args.image_size, args.jpeg_quality,
            args.max_image_pixels, int(args.max_file_mb * 1024 * 1024))
    workers = min(args.workers or cpu_count(), max(1, len(tasks)))
    log.info("processing %d files with %d worker(s)", len(tasks), workers)
    bar = tqdm(total=len(tasks), unit="img", desc="preprocess", file=sys.stderr,
               mininterval=1.0 if sys.stderr.isatty() else 30.0)
    if workers == 1:
        _init_worker(*init)
        results = map(_process, tasks)
        pool = None
    else:
        import multiprocessing

        pool = multiprocessing.get_context("fork").Pool(workers, _init_worker, init)
        results = pool.imap_unordered(_process, tasks, chunksize=8)
    try:
        for index, digest, reason in results:
            items[index].digest = digest
            items[index].reason = reason
            bar.update(1)
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()


def fingerprint(items: list[Item]) -> str:
    h = hashlib.sha256()
    for item in sorted(items, key=lambda i: i.rel):
        h.update(f"{item.rel}\t{item.digest or item.size}\n".encode())
    return "sha256:" + h.hexdigest()


def check_classes(items: list[Item], layout: str) -> list[str]:
    good = [i for i in items if i.reason is None]
    if not good:
        raise UserError("no usable images in the input: every file was skipped (see the "
                        "reasons above); check --input-dir")
    classes = sorted({i.cls for i in good})
    if len(classes) < 2:
        raise UserError(f"only one class folder ({classes[0]}) has images; a classifier needs "
                        f"at least 2 <class>/ folders")
    if layout == "presplit":
        in_train = {i.cls for i in good if i.split == "train"}
        missing = [c for c in classes if c not in in_train]
        if missing:
            raise UserError(f"class {', '.join(missing[:5])} has no usable image in train/; "
                            f"every class needs training images")
    return classes


def replace_outputs(output_dir: Path, staging: Path, items: list[Item], names: dict[int, str],
                    manifest: dict) -> None:
    """Only now touch the output folder: empty each split folder and move the new files in."""
    tree = staging / "tree"
    for idx, rel in names.items():
        dest = tree / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging / f"{idx}.jpg", dest)
    for split in SPLITS:
        target = output_dir / split
        target.mkdir(parents=True, exist_ok=True)
        for child in target.iterdir():  # the folder itself may be a mount point: keep it
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        new = tree / split
        if new.is_dir():
            for child in sorted(new.iterdir()):
                shutil.move(str(child), str(target / child.name))
    manifest_dir = output_dir / "manifest"
    manifest_dir.mkdir(parents=True, exist_ok=True)
    tmp = manifest_dir / ".manifest.json.tmp"
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, manifest_dir / "manifest.json")


def validate_args(args) -> None:
    from breedkit.transforms import size_problem, stored_size

    if args.image_size == 0 and args.crop_size < 16:
        raise UserError("--image-size 0 derives the stored size from --crop-size: give "
                        "--crop-size (>= 16) too")
    problem = size_problem(args.image_size, args.crop_size, args.eval_crop_size)
    if problem:
        raise UserError(problem)
    args.image_size = stored_size(args.image_size, args.crop_size, args.eval_crop_size)
    if args.image_size < 16:
        raise UserError(f"--image-size must be >= 16, got {args.image_size}")
    if not (0 <= args.valid_ratio < 1 and 0 <= args.test_ratio < 1
            and args.valid_ratio + args.test_ratio < 1):
        raise UserError("--valid-ratio and --test-ratio must be in [0, 1) and sum to less than 1")
    if not 1 <= args.jpeg_quality <= 100:
        raise UserError("--jpeg-quality must be between 1 and 100")
    inp, out = Path(args.input_dir).resolve(), Path(args.output_dir).resolve()
    if out == inp or inp in out.parents:
        raise UserError(f"--output-dir {args.output_dir} is inside --input-dir {args.input_dir}; "
                        f"a second run would read its own output. Choose another folder")


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    validate_args(args)
    source = open_source(args.input_dir)
    layout, items = plan_items(source)
    log.info("input %s: %d files, %s layout", args.input_dir, len(items), layout)

    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    staging = output_dir / f".preprocess-staging-{os.getpid()}"
    staging.mkdir()
    try:
        run_workers(source, items, str(staging), args)
        classes = check_classes(items, layout)
        assign_splits(items, layout, args.seed, args.valid_ratio, args.test_ratio)
        names = output_names(items)
        duplicates = duplicates_across_splits(items)
        skipped = [{"file": i.rel, "reason": i.reason} for i in items if i.reason is not None]
        counts = {}
        for split in SPLITS:
            per_class = Counter(i.cls for i in items if i.reason is None and i.split == split)
            counts[split] = {"total": sum(per_class.values()),
                             "per_class": {c: per_class.get(c, 0) for c in classes}}
        manifest = {
            "format_version": MANIFEST_VERSION,
            "classes": classes,
            "layout": layout,
            "counts": counts,
            "skipped": skipped,
            "duplicates_across_splits": duplicates,
            "fingerprint": fingerprint(items),
            "parameters": {"image_size": args.image_size, "seed": args.seed,
                           "valid_ratio": args.valid_ratio, "test_ratio": args.test_ratio,
                           "jpeg_quality": args.jpeg_quality,
                           "max_image_pixels": args.max_image_pixels},
        }
        for split in SPLITS:
            empty = [c for c in classes if counts[split]["per_class"][c] == 0]
            if empty and split != "train":
                log.warning("%s split has no image of class %s", split, ", ".join(empty[:10]))
        replace_outputs(output_dir, staging, items, names, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    reasons = Counter(s["reason"].split(":")[0] for s in skipped)
    log.info("wrote %s: %d classes; train %d, valid %d, test %d images; skipped %d file(s)%s",
             output_dir, len(classes), counts["train"]["total"], counts["valid"]["total"],
             counts["test"]["total"], len(skipped),
             " (" + ", ".join(f"{n} {r}" for r, n in reasons.most_common()) + ")" if skipped
             else "")
    for s in skipped[:20]:
        log.warning("skipped %s: %s", s["file"], s["reason"])
    if len(skipped) > 20:
        log.warning("... and %d more skipped files, listed in manifest/manifest.json",
                    len(skipped) - 20)
    if duplicates:
        log.warning("%d group(s) of identical files are in more than one split (listed under "
                    "duplicates_across_splits in manifest/manifest.json): an image in both train "
                    "and test flatters the test accuracy; remove the copies", len(duplicates))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
