"""Batch scoring in SageMaker: the DogBreedBatch pipeline (BatchModel -> BatchScore, a Batch
Transform of a registered version) run by the local engine from the definition --upsert sends,
and the requests ``python -m pipelines.batch --sagemaker`` makes."""

from __future__ import annotations

import json
import shutil

import pytest

from pipelines import run as run_cli
from pipelines import spec
from pipelines.registry import LocalRegistry
from test_deploy_local import home  # noqa: F401 - a home and a trained model's archive

GROUP = spec.DEFAULT_MODEL_PACKAGE_GROUP


@pytest.fixture
def approved(home):  # noqa: F811
    registry = LocalRegistry(home["home"])
    registry.register(GROUP, str(home["archive"]), approval_status="Approved")
    return home


def test_the_batch_pipeline_scores_a_folder_locally_as_the_endpoint_answers(approved, tmp_path,
                                                                           capsys):
    photos = tmp_path / "photos"
    shutil.copytree(approved["data"] / "test", photos)
    good = sorted(p.relative_to(photos).as_posix() for p in photos.rglob("*.jpg"))
    (photos / "notes.txt").write_text("not an image")
    (photos / "truncated.jpg").write_bytes((photos / good[0]).read_bytes()[:200])
    out_def = tmp_path / "batch.json"
    code = run_cli.main(["--local", "--batch", "--home", str(approved["home"]),
                         "--param", f"BatchInputUrl={photos}", "--definition-out", str(out_def)])
    printed = capsys.readouterr()
    assert code == 0, printed.out + printed.err
    definition = json.loads(out_def.read_text())
    assert [s["Type"] for s in definition["Steps"]] == ["Model", "Transform"]

    # each image's record is the endpoint's answer, named by its key below the input prefix;
    # the bad files are records saying why
    (execution,) = (approved["home"] / "s3" / "dogbreed-local" / "dogbreed" / "batch" /
                    "output").iterdir()
    records = {p.relative_to(execution).as_posix().removesuffix(".out"): json.loads(p.read_text())
               for p in execution.rglob("*.out")}
    assert set(records) == {*good, "notes.txt", "truncated.jpg"}
    assert records["notes.txt"]["error"]["status"] == 400
    assert records["truncated.jpg"]["error"]["status"] == 400
    assert records["truncated.jpg"]["error"]["message"].startswith("image: ")
    right = 0
    for name in good:
        (answer,) = records[name]["predictions"]
        assert len(answer["top_k"]) == 3  # 3 classes
        right += answer["class"] == name.split("/")[0]
    assert right >= 0.8 * len(good)  # a trained model, on images of its classes
