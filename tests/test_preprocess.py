"""preprocess.py end to end, in a subprocess, on generated folders and zips."""

from __future__ import annotations

import hashlib
import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import CLASS_STYLES, make_image_folder, make_split_folders, read_json, run_script

CLASSES = sorted(CLASS_STYLES)


def preprocess(inp, out, *args):
    return run_script("preprocess.py", "--input-dir", inp, "--output-dir", out, *args)


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def images_in(split_dir: Path) -> list[Path]:
    return sorted(split_dir.rglob("*.jpg"))


def test_unsplit_folder_is_split_stratified_and_resized(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 20, size=(300, 200))
    proc = preprocess(raw, tmp_path / "out", "--image-size", "64", "--valid-ratio", "0.2",
                      "--test-ratio", "0.1")
    assert proc.returncode == 0, proc.stderr
    manifest = read_json(tmp_path / "out/manifest/manifest.json")
    assert manifest["classes"] == CLASSES
    assert manifest["layout"] == "unsplit"
    import preprocess as pp

    for cls in CLASSES:  # 20 per class: about 4 valid, 2 test, 14 train (hash-assigned)
        counts = {split: manifest["counts"][split]["per_class"][cls] for split in pp.SPLITS}
        assert sum(counts.values()) == 20
        for split, ratio in (("valid", 0.2), ("test", 0.1)):
            low, high = pp.split_bounds(20, ratio)
            assert low <= counts[split] <= high, (cls, counts)
        for split, n in counts.items():
            assert len(images_in(tmp_path / "out" / split / cls)) == n
    assert manifest["skipped"] == []
    assert manifest["fingerprint"].startswith("sha256:")
    # no image appears in two splits
    names = [p.relative_to(tmp_path / "out" / p.parts[-3]).as_posix()
             for split in ("train", "valid", "test") for p in images_in(tmp_path / "out" / split)]
    assert len(names) == len(set(names)) == 60
    with Image.open(images_in(tmp_path / "out/train")[0]) as img:
        assert img.format == "JPEG" and img.mode == "RGB"
        assert min(img.size) == 64 and img.size == (96, 64)  # 300x200 keeps its aspect ratio


def test_modes_and_exif_orientation_become_upright_rgb(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 6, classes=CLASSES[:2])
    odd = raw / CLASSES[0]
    Image.new("RGBA", (80, 40), (0, 0, 255, 0)).save(odd / "transparent.png")  # -> white
    Image.new("P", (40, 80)).save(odd / "palette.gif")
    Image.new("CMYK", (60, 40), (0, 255, 255, 0)).save(odd / "cmyk.jpg")  # red in CMYK
    Image.new("L", (40, 60), 128).save(odd / "grey.jpg")
    Image.fromarray(np.full((40, 50), 40000, dtype=np.uint16)).save(odd / "sixteen.png")
    rotated = Image.new("RGB", (80, 40), (10, 200, 10))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees when displayed
    rotated.save(odd / "rotated.jpg", exif=exif)
    proc = preprocess(raw, tmp_path / "out", "--image-size", "32", "--valid-ratio", "0",
                      "--test-ratio", "0")
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out/train" / CLASSES[0]
    for name in ("transparent", "palette", "cmyk", "grey", "sixteen", "rotated"):
        with Image.open(out / f"{name}.jpg") as img:
            assert img.mode == "RGB", name
            assert min(img.size) == 32, name
    with Image.open(out / "transparent.jpg") as img:
        assert min(img.getpixel((5, 5))) > 240  # alpha composited on white
    with Image.open(out / "cmyk.jpg") as img:
        r, g, b = img.getpixel((5, 5))
        assert r > 200 and g < 60 and b < 60
    with Image.open(out / "rotated.jpg") as img:
        assert img.size == (32, 64)  # EXIF orientation applied: portrait now


def test_bad_files_are_skipped_and_listed(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 8)
    bad = raw / CLASSES[1]
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("this is not an image")
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)
                    ).save(noise, "JPEG")
    (bad / "truncated.jpg").write_bytes(noise.getvalue()[: len(noise.getvalue()) * 2 // 3])
    Image.new("1", (400, 400)).save(bad / "bomb.png")  # 160k pixels, over the limit set below
    (raw / "README.txt").write_text("loose file")
    proc = preprocess(raw, tmp_path / "out", "--image-size", "32", "--max-image-pixels", "100000")
    assert proc.returncode == 0, proc.stderr
    manifest = read_json(tmp_path / "out/manifest/manifest.json")
    reasons = {s["file"]: s["reason"] for s in manifest["skipped"]}
    prefix = CLASSES[1] + "/"
    assert set(reasons) == {prefix + "empty.jpg", prefix + "notes.jpg", prefix + "truncated.jpg",
                            prefix + "bomb.png", "README.txt"}
    assert "empty" in reasons[prefix + "empty.jpg"]
    assert "not an image" in reasons[prefix + "notes.jpg"]
    assert "truncated" in reasons[prefix + "truncated.jpg"]
    assert "limit" in reasons[prefix + "bomb.png"] or "bomb" in reasons[prefix + "bomb.png"]
    assert "class folder" in reasons["README.txt"]
    total = sum(manifest["counts"][s]["total"] for s in ("train", "valid", "test"))
    assert total == 24
    assert "skipped 5 file(s)" in proc.stdout
    assert "bomb.png" in proc.stdout


def test_presplit_zip_with_wrapper_folder(tmp_path):
    tree = make_split_folders(tmp_path / "dogImages", 6, 2, 3)
    archive = tmp_path / "input" / "dogImages.zip"
    archive.parent.mkdir()
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(tree.rglob("*")):
            zf.write(path, Path("dogImages") / path.relative_to(tree))
        zf.writestr("__MACOSX/dogImages/train/._junk.jpg", b"resource fork")
        zf.writestr("dogImages/train/.DS_Store", b"finder")
    # a folder holding only the zip, as a ProcessingInput delivers it
    proc = preprocess(archive.parent, tmp_path / "out", "--image-size", "32")
    assert proc.returncode == 0, proc.stderr
    manifest = read_json(tmp_path / "out/manifest/manifest.json")
    assert manifest["layout"] == "presplit"
    assert manifest["classes"] == CLASSES
    assert manifest["skipped"] == []
    for split, n in (("train", 6), ("valid", 2), ("test", 3)):
        assert manifest["counts"][split]["total"] == n * 3
        assert set(manifest["counts"][split]["per_class"].values()) == {n}
        assert len(images_in(tmp_path / "out" / split)) == n * 3


def test_presplit_without_valid_carves_it_from_train(tmp_path):
    tree = make_split_folders(tmp_path / "raw", 10, 0, 2)
    proc = preprocess(tree, tmp_path / "out", "--image-size", "32", "--valid-ratio", "0.2")
    assert proc.returncode == 0, proc.stderr
    counts = read_json(tmp_path / "out/manifest/manifest.json")["counts"]
    assert counts["train"]["total"] + counts["valid"]["total"] == 30
    assert all(c >= 1 for c in counts["valid"]["per_class"].values())
    assert 3 <= counts["valid"]["total"] <= 12  # about 20% of train/, per class by hash
    assert counts["test"]["total"] == 6  # test/ is kept as given, not re-split


def test_rerun_gives_identical_output_whatever_the_worker_count(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 12, size=(120, 90))
    (raw / CLASSES[0] / "000.png").write_bytes((raw / CLASSES[0] / "001.jpg").read_bytes())
    assert preprocess(raw, tmp_path / "a", "--image-size", "40", "--workers", "2").returncode == 0
    assert preprocess(raw, tmp_path / "b", "--image-size", "40", "--workers", "1").returncode == 0
    first = tree_digest(tmp_path / "a")
    assert first == tree_digest(tmp_path / "b")
    # colliding stems (000.jpg and 000.png) are both kept, under distinct names
    assert sum(1 for k in first if Path(k).name.startswith("000")) == 4
    assert preprocess(raw, tmp_path / "a", "--image-size", "40").returncode == 0
    assert tree_digest(tmp_path / "a") == first  # re-run into the same folder: same bytes
    # another seed gives another split of the same images
    assert preprocess(raw, tmp_path / "c", "--image-size", "40", "--seed", "7").returncode == 0
    assert tree_digest(tmp_path / "c") != first


def test_no_images_is_a_clear_error(tmp_path):
    raw = tmp_path / "raw" / "cls"
    raw.mkdir(parents=True)
    (raw / "a.txt").write_text("nothing to see")
    proc = preprocess(tmp_path / "raw", tmp_path / "out")
    assert proc.returncode == 2
    assert "no usable images" in proc.stderr and "Traceback" not in proc.stderr
    proc = preprocess(tmp_path / "missing", tmp_path / "out")
    assert proc.returncode == 2 and "does not exist" in proc.stderr


def test_too_small_class_names_the_class_and_keeps_previous_output(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 10)
    assert preprocess(raw, tmp_path / "out", "--image-size", "32").returncode == 0
    before = tree_digest(tmp_path / "out")
    tiny = raw / "004.Tiny"
    tiny.mkdir()
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tiny / "only.jpg")
    Image.new("RGB", (40, 40), (1, 2, 3)).save(tiny / "two.jpg")
    proc = preprocess(raw, tmp_path / "out", "--image-size", "32")
    assert proc.returncode == 2
    assert "004.Tiny (2 usable image(s), needs at least 3)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert tree_digest(tmp_path / "out") == before  # nothing written before the failure lost
    assert not list((tmp_path / "out").glob(".preprocess-staging-*"))


def test_output_inside_input_and_bad_arguments_are_refused(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 4)
    proc = preprocess(raw, raw / "out")
    assert proc.returncode == 2 and "inside --input-dir" in proc.stderr
    proc = preprocess(raw, tmp_path / "out", "--valid-ratio", "0.6", "--test-ratio", "0.5")
    assert proc.returncode == 2 and "--valid-ratio" in proc.stderr
    proc = preprocess(raw, tmp_path / "out", "--no-such-flag", "1")
    assert proc.returncode == 2 and "unrecognized arguments" in proc.stderr


def test_the_stored_size_is_derived_from_the_crops_and_never_below_one(tmp_path):
    raw = make_image_folder(tmp_path / "raw", 6, size=(300, 200))
    # 0: the evaluation's resize of the larger crop (256 for 224: 37 for 32, 55 for 48)
    proc = preprocess(raw, tmp_path / "derived", "--image-size", "0", "--crop-size", "32",
                      "--eval-crop-size", "48")
    assert proc.returncode == 0, proc.stderr
    assert read_json(tmp_path / "derived/manifest/manifest.json")["parameters"][
        "image_size"] == 55
    with Image.open(images_in(tmp_path / "derived/train")[0]) as img:
        assert min(img.size) == 55
    # stored below the crop: every image would be upsampled; refused, nothing written
    proc = preprocess(raw, tmp_path / "small", "--image-size", "256", "--crop-size", "384")
    assert proc.returncode == 2
    assert "PreprocessImageSize 256 is smaller than the training crop ImageSize 384" in \
        proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "small" / "train").exists()
    proc = preprocess(raw, tmp_path / "small", "--image-size", "0")
    assert proc.returncode == 2 and "give --crop-size" in proc.stderr


def test_decode_tensor_draft_decodes_large_jpegs_at_a_reduced_scale():
    import numpy as np
    import torch
    from torchvision.transforms.v2.functional import resize

    from breedkit.images import decode_tensor

    yy, xx = np.mgrid[0:600, 0:800]
    pixels = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], -1)
    encoded = {}
    for fmt in ("JPEG", "PNG"):
        buf = io.BytesIO()
        Image.fromarray(pixels.astype(np.uint8)).save(buf, fmt)
        encoded[fmt] = buf.getvalue()
    full = decode_tensor(encoded["JPEG"])
    reduced = decode_tensor(encoded["JPEG"], draft=100)
    # 1/4 scale is the smallest that still covers a 100 px shorter side
    assert tuple(full.shape) == (3, 600, 800) and tuple(reduced.shape) == (3, 150, 200)
    same = resize(full, [150, 200], antialias=True)
    assert (reduced.int() - same.int()).abs().float().mean() < 2.0
    # images under twice the draft size, and other formats, decode at full size
    assert torch.equal(decode_tensor(encoded["JPEG"], draft=400), full)
    assert tuple(decode_tensor(encoded["PNG"], draft=100).shape) == (3, 600, 800)


def test_decode_tensor_matches_pillow_for_jpeg_and_png():
    from breedkit.images import ImageDecodeError, decode_tensor

    img = Image.new("RGB", (30, 20), (12, 200, 99))
    for fmt in ("PNG", "BMP"):
        buf = io.BytesIO()
        img.save(buf, fmt)
        tensor = decode_tensor(buf.getvalue())
        assert tuple(tensor.shape) == (3, 20, 30)
        assert tensor[:, 0, 0].tolist() == [12, 200, 99]
    with pytest.raises(ImageDecodeError):
        decode_tensor(b"")
    with pytest.raises(ImageDecodeError):
        decode_tensor(b"\x89PNG garbage")
    buf = io.BytesIO()
    Image.new("L", (300, 300)).save(buf, "PNG")
    with pytest.raises(ImageDecodeError, match="limit"):
        decode_tensor(buf.getvalue(), max_pixels=10_000)
