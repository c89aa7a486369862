"""preprocess.py on awkward input (file names that are not UTF-8, hostile zip entries) and
its split of unsplit data: stable per image, close to the ratios, duplicates reported."""

from __future__ import annotations

import os
import shutil
import zipfile
from collections import Counter
from pathlib import Path

import pytest

import preprocess as pp
from conftest import CLASS_STYLES, make_image_folder, read_json, run_script

CLASSES = sorted(CLASS_STYLES)
needs_byte_names = pytest.mark.skipif(os.name != "posix" or
                                      os.uname().sysname == "Darwin",
                                      reason="needs a file system that takes any bytes as names")


def preprocess(inp, out, *args):
    return run_script("preprocess.py", "--input-dir", inp, "--output-dir", out,
                      "--image-size", "16", "--workers", "1", *args)


def split_of(out: Path) -> dict[str, str]:
    """<class>/<stem> -> split, from the output folders."""
    return {f"{p.parent.name}/{p.stem}": p.parts[-3]
            for split in pp.SPLITS for p in (out / split).rglob("*.jpg")}


@needs_byte_names
def test_names_that_are_not_utf8_are_skipped_with_the_reason(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 6)
    some_image = (raw / CLASSES[0] / "000.jpg").read_bytes()
    (raw / CLASSES[0] / os.fsdecode(b"caf\xe9.jpg")).write_bytes(some_image)
    latin1_class = raw / os.fsdecode(b"004.Caf\xe9")
    latin1_class.mkdir()
    for i in range(3):
        (latin1_class / f"{i}.jpg").write_bytes(some_image)
    proc = preprocess(raw, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    manifest = read_json(tmp_path / "out/manifest/manifest.json")
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {f"{CLASSES[0]}/caf\\xe9.jpg",
                            *[f"004.Caf\\xe9/{i}.jpg" for i in range(3)]}
    assert all("not valid UTF-8" in r and "rename" in r for r in reasons.values())
    assert manifest["classes"] == CLASSES
    assert sum(manifest["counts"][s]["total"] for s in pp.SPLITS) == 18


def test_absolute_and_parent_entries_in_a_zip_are_refused_and_listed(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 6)
    archive = tmp_path / "input" / "data.zip"
    archive.parent.mkdir()
    image = (raw / CLASSES[0] / "000.jpg").read_bytes()
    hostile = ["/tmp/x/evil.jpg", "../evil.jpg", f"{CLASSES[0]}/../../evil.jpg",
               "C:/windows/evil.jpg"]
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(raw.rglob("*.jpg")):
            zf.write(path, path.relative_to(raw).as_posix())
        for name in hostile:
            zf.writestr(zipfile.ZipInfo(name), image)  # (ZipInfo keeps the name as given)
    assert sorted(n for n in zipfile.ZipFile(archive).namelist() if "evil" in n) == \
        sorted(hostile)
    proc = preprocess(archive, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    manifest = read_json(tmp_path / "out/manifest/manifest.json")
    assert manifest["classes"] == CLASSES  # no class "tmp" or "C:"
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == set(hostile)
    assert "absolute" in reasons["/tmp/x/evil.jpg"] and "absolute" in \
        reasons["C:/windows/evil.jpg"]
    assert ".." in reasons["../evil.jpg"] and ".." in reasons[f"{CLASSES[0]}/../../evil.jpg"]
    assert sum(manifest["counts"][s]["total"] for s in pp.SPLITS) == 18
    assert "evil.jpg" in proc.stdout  # said, not only written down


def test_adding_an_image_moves_no_other_image_between_splits(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 30)
    assert preprocess(raw, tmp_path / "a").returncode == 0
    before = split_of(tmp_path / "a")
    shutil.copy(raw / CLASSES[1] / "003.jpg", raw / CLASSES[0] / "new.jpg")
    (raw / CLASSES[2] / "017.jpg").unlink()
    assert preprocess(raw, tmp_path / "b").returncode == 0
    after = split_of(tmp_path / "b")
    assert set(after) == set(before) - {f"{CLASSES[2]}/017"} | {f"{CLASSES[0]}/new"}
    moved = {k: (before[k], after[k]) for k in set(before) & set(after) if before[k] != after[k]}
    assert moved == {}
    # the same images moved into a wrapper folder keep their splits: the hash is of the path
    # under the class folder
    shutil.move(str(raw), str(tmp_path / "wrapped" / "photos"))
    assert preprocess(tmp_path / "wrapped", tmp_path / "c").returncode == 0
    assert split_of(tmp_path / "c") == after
    # another seed, another split
    assert preprocess(tmp_path / "wrapped", tmp_path / "d", "--seed", "7").returncode == 0
    assert split_of(tmp_path / "d") != after


def test_duplicates_that_cross_splits_are_reported(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 20)
    for i in range(20):  # each image of the first class twice, under another name
        shutil.copy(raw / CLASSES[0] / f"{i:03d}.jpg", raw / CLASSES[0] / f"copy-{i:03d}.jpg")
    proc = preprocess(raw, tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    manifest = read_json(tmp_path / "out/manifest/manifest.json")
    splits = split_of(tmp_path / "out")
    expected = {tuple(sorted([(f"{CLASSES[0]}/{i:03d}.jpg", splits[f"{CLASSES[0]}/{i:03d}"]),
                              (f"{CLASSES[0]}/copy-{i:03d}.jpg",
                               splits[f"{CLASSES[0]}/copy-{i:03d}"])]))
                for i in range(20)
                if splits[f"{CLASSES[0]}/{i:03d}"] != splits[f"{CLASSES[0]}/copy-{i:03d}"]}
    assert expected  # the test means something: some copies did land in another split
    reported = {tuple(sorted((f["file"], f["split"]) for f in group["files"]))
                for group in manifest["duplicates_across_splits"]}
    assert reported == expected
    assert all(len(group["sha256"]) == 64 for group in manifest["duplicates_across_splits"])
    assert f"{len(expected)} group(s) of identical files" in proc.stdout


@pytest.mark.parametrize("n", [3, 5, 8, 10, 13, 20, 40, 100])
def test_split_counts_stay_close_to_the_ratios_for_small_classes(n):
    """Per class, over many seeds: valid and test within two standard deviations of n*ratio
    (rounded outwards, at least one image each), and at least one image left to train on."""
    import math

    for seed in range(60):
        items = [pp.Item(f"c/{i:04d}.jpg", "", 1, None, "c") for i in range(n)]
        pp.assign_splits(items, "unsplit", seed, 0.1, 0.1)
        counts = Counter(i.split for i in items)
        assert counts["train"] >= 1
        expected, sd = n * 0.1, math.sqrt(n * 0.1 * 0.9)
        for split in ("valid", "test"):
            low = max(1, math.floor(expected - 2 * sd))
            high = math.ceil(expected + 2 * sd)
            assert low <= counts[split] <= high, (n, seed, counts)
