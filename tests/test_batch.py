"""python -m pipelines.batch: a folder or zip scored with a registered version's own serving
handlers, unreadable files as rows, resumed after an interruption from its output file."""

from __future__ import annotations

import csv
import json
import shutil
import zipfile

import pytest

from pipelines import batch
from pipelines.registry import LocalRegistry
from test_deploy_local import home  # noqa: F401 - the home and archive this module scores with

GROUP = "DogBreedModels"


@pytest.fixture
def registered(home):  # noqa: F811
    LocalRegistry(home["home"]).register(GROUP, str(home["archive"]), approval_status="Approved")
    return home


def run(home, *args) -> int:
    return batch.main(["--home", str(home["home"]), "--quiet", *map(str, args)])


def rows_of(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_a_folder_is_scored_as_the_endpoint_would_with_bad_files_as_rows(registered, tmp_path,
                                                                         trained, capsys):
    photos = tmp_path / "photos"
    shutil.copytree(registered["data"] / "test", photos / "nested")
    (photos / "notes.txt").write_text("not an image")
    good = sorted((photos / "nested").rglob("*.jpg"))
    (photos / "truncated.jpg").write_bytes(good[0].read_bytes()[:200])
    (photos / ".hidden.jpg").write_bytes(good[0].read_bytes())  # hidden files are left out
    out = tmp_path / "scores.csv"
    assert run(registered, "--input", photos, "--output", out, "--batch-size", "4") == 0
    rows = rows_of(out)
    # a folder's files first (sorted), then its subfolders, each the same way
    assert [r["file"] for r in rows] == ["notes.txt", "truncated.jpg",
                                         *(p.relative_to(photos).as_posix() for p in good)]
    errors = {r["file"]: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"notes.txt", "truncated.jpg"}
    assert all(len(r["top_k"].split("|")) == 3 for r in rows if not r["error"])  # 3 classes
    assert f"{len(good)} images scored, 2 files unreadable" in capsys.readouterr().err

    # the same answers as evaluate.py gives these images (the same transforms and TTA)
    from conftest import run_script
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir",
                      registered["data"] / "test", "--output-dir", tmp_path / "evaluation",
                      "--bootstrap-rounds", "0")
    assert proc.returncode == 0, proc.stderr
    evaluated = {r["file"]: r for r in rows_of(tmp_path / "evaluation" / "predictions.csv")}
    for row in rows:
        if not row["error"]:
            expected = evaluated[row["file"].removeprefix("nested/")]
            assert row["class"] == expected["predicted_class"], row
            assert float(row["probability"]) == pytest.approx(float(expected["probability"]),
                                                              abs=1e-4)


def test_an_interrupted_run_resumes_after_its_last_whole_row(registered, tmp_path):
    archive = tmp_path / "photos.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted((registered["data"] / "valid").rglob("*.jpg")):
            zf.write(path, path.relative_to(registered["data"]).as_posix())
        zf.writestr("../escape.jpg", b"refused")
    whole = tmp_path / "whole.jsonl"
    assert run(registered, "--input", archive, "--output", whole, "--top-k", "2") == 0
    lines = whole.read_text().splitlines()
    assert len(lines) == 31 and json.loads(lines[0])["error"].startswith(
        "'..' in the path inside the zip archive: refused")  # as preprocessing refuses it
    assert all(len(json.loads(line).get("top_k", [1, 2])) == 2 for line in lines)
    # as if stopped while writing row 13: 12 whole rows and half of the 13th
    cut = tmp_path / "cut.jsonl"
    cut.write_text("\n".join(lines[:12]) + "\n" + lines[12][:20])
    assert run(registered, "--input", archive, "--output", cut, "--top-k", "2") == 0
    assert cut.read_text() == whole.read_text()
    # stopped inside its very first row (a CSV, header and all): starts over
    first = tmp_path / "first.csv"
    first.write_text("file,label,cl")
    assert run(registered, "--input", archive, "--output", first) == 0
    assert first.read_text().count("\n") == 31 + 1  # the header and a row per file
    # a finished output: nothing to do, nothing changed
    assert run(registered, "--input", archive, "--output", cut, "--top-k", "2") == 0
    assert cut.read_text() == whole.read_text()


def test_an_output_of_another_input_is_refused_untouched(registered, tmp_path, capsys):
    out = tmp_path / "scores.csv"
    assert run(registered, "--input", registered["data"] / "valid", "--output", out) == 0
    before = out.read_bytes()
    other = tmp_path / "other"
    for i, path in enumerate(sorted((registered["data"] / "test").rglob("*.jpg"))):
        (other / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, other / path.parent.name / f"photo-{i:03d}.jpg")
    assert run(registered, "--input", other, "--output", out) == 2
    assert "written for another input; pass a new --output" in capsys.readouterr().err
    assert out.read_bytes() == before


@pytest.mark.parametrize("args, message", [
    (("--input", "missing-folder", "--output", "x.csv"), "does not exist"),
    (("--input", ".", "--output", "x.txt"), "name a .csv or .jsonl file"),
    (("--input", ".", "--output", "x.csv", "--version", "9"), "version 9"),
    (("--input", ".", "--output", "x.csv", "--batch-size", "0"), "--batch-size must be"),
])
def test_bad_requests_are_one_line(registered, tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert run(registered, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err


def test_without_an_approved_version_it_says_how_to_get_one(home, tmp_path, capsys):  # noqa: F811
    LocalRegistry(home["home"]).register(GROUP, str(home["archive"]))
    assert run(home, "--input", home["data"] / "valid", "--output", tmp_path / "s.csv") == 2
    assert "no Approved version" in capsys.readouterr().err
