"""inference.py, served from a model directory extracted alone into an empty folder.

The requests go through the SageMaker inference toolkit's own Transformer (the code the PyTorch
serving container runs), so status codes are the ones a real endpoint would answer with.
"""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
import tarfile
import textwrap

import pytest

from conftest import run_script

from breedkit import archives

SERVE = textwrap.dedent('''
    import base64, json, os, sys
    model_dir = sys.argv[1]
    sys.path.insert(0, os.path.join(model_dir, "code"))   # what the serving container does
    from sagemaker_inference.transformer import Transformer

    class Request:
        def __init__(self, headers): self.headers = headers
        def get_request_properties(self): return self.headers

    class Context:
        def __init__(self, headers):
            self.system_properties = {"model_dir": model_dir}
            self.request_processor = [Request(headers)]
            self.status, self.content_type = 200, None
        def set_response_content_type(self, idx, value): self.content_type = value
        def set_response_status(self, code, phrase): self.status = code

    transformer = Transformer()
    results = []
    for request in json.load(sys.stdin):
        body = base64.b64decode(request["body"])
        headers = {"Content-Type": request["content_type"], "Accept": request.get("accept")}
        ctx = Context(headers)
        out = transformer.transform([{"body": body}], ctx)[0]
        results.append({"status": ctx.status, "body": out if ctx.status != 200 else json.loads(out)})
    import inference
    results.append({"module": os.path.abspath(inference.__file__)})
    print(json.dumps(results))
''')


@pytest.fixture(scope="module")
def served_model(trained, tmp_path_factory):
    """model.tar.gz extracted alone into an empty folder, far from the project's sources."""
    tmp = tmp_path_factory.mktemp("endpoint")
    with tarfile.open(tmp / "model.tar.gz", "w:gz") as tar:
        for item in sorted(trained["model"].iterdir()):
            tar.add(item, arcname=item.name)
    model_dir = tmp / "opt-ml-model"
    model_dir.mkdir()
    with tarfile.open(tmp / "model.tar.gz") as tar:  # Python 3.11.2 has no filter="data"
        archives.extract(tar, model_dir)
    return model_dir


def invoke(model_dir, requests, cwd):
    payload = [{"content_type": r[0], "body": base64.b64encode(r[1]).decode(),
                "accept": r[2] if len(r) > 2 else None} for r in requests]
    proc = subprocess.run([sys.executable, "-c", SERVE, str(model_dir)], input=json.dumps(payload),
                          capture_output=True, text=True, cwd=cwd, timeout=300,
                          env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2",
                               "HOME": str(cwd)})
    assert proc.returncode == 0, proc.stderr
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    assert results[-1]["module"] == str(model_dir / "code" / "inference.py")
    return results[:-1]


def test_predictions_match_evaluation_for_every_content_type(trained, served_model, tmp_path):
    out = tmp_path / "evaluation"
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir",
                      trained["data"] / "test", "--output-dir", out, "--bootstrap-rounds", "5")
    assert proc.returncode == 0, proc.stderr
    with open(out / "predictions.csv") as fh:
        expected = {r["file"]: r for r in csv.DictReader(fh)}
    files = sorted(expected)[::4]
    test_dir = trained["data"] / "test"
    requests = [("image/jpeg", (test_dir / f).read_bytes()) for f in files]
    # the same images as application/x-image and as one JSON request with top_k
    requests.append(("application/x-image", (test_dir / files[0]).read_bytes()))
    b64 = [base64.b64encode((test_dir / f).read_bytes()).decode() for f in files[:3]]
    requests.append(("application/json", json.dumps({"images": b64, "top_k": 2}).encode()))
    requests.append(("application/json; charset=utf-8",
                     json.dumps({"instances": [{"b64": b64[0]}]}).encode()))
    results = invoke(served_model, requests, tmp_path)
    for f, result in zip(files, results):
        assert result["status"] == 200
        (pred,) = result["body"]["predictions"]
        assert pred["class"] == expected[f]["predicted_class"], f
        assert pred["probability"] == pytest.approx(float(expected[f]["probability"]), abs=1e-4)
        assert len(pred["top_k"]) == 3  # min(default 5, 3 classes)
        assert pred["top_k"][0]["class"] == pred["class"]
        probs = [p["probability"] for p in pred["top_k"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-4)
        assert pred["label"] == pred["class"].split(".", 1)[1].replace("_", " ")
    x_image, batch, instances = results[len(files):]
    assert x_image["body"]["predictions"][0]["class"] == expected[files[0]]["predicted_class"]
    assert [p["class"] for p in batch["body"]["predictions"]] == [
        expected[f]["predicted_class"] for f in files[:3]]
    assert all(len(p["top_k"]) == 2 for p in batch["body"]["predictions"])
    assert instances["status"] == 200


def test_png_is_accepted(trained, served_model, tmp_path):
    from PIL import Image

    jpg = next((trained["data"] / "test").rglob("*.jpg"))
    with Image.open(jpg) as img:
        img.save(tmp_path / "x.png")
    (result,) = invoke(served_model, [("image/png", (tmp_path / "x.png").read_bytes())], tmp_path)
    assert result["status"] == 200 and len(result["body"]["predictions"]) == 1


def test_a_large_photo_gets_the_same_answer_as_its_small_version(trained, served_model,
                                                                  tmp_path):
    """Large JPEGs are decoded at a reduced scale (like preprocess.py does): same prediction."""
    from PIL import Image

    jpg = sorted((trained["data"] / "test").rglob("*.jpg"))[0]
    with Image.open(jpg) as img:
        img.resize((img.width * 12, img.height * 12), Image.Resampling.BICUBIC).save(
            tmp_path / "large.jpg", quality=95)
    small, large = invoke(served_model, [("image/jpeg", jpg.read_bytes()),
                                         ("image/jpeg", (tmp_path / "large.jpg").read_bytes())],
                          tmp_path)
    assert small["status"] == large["status"] == 200
    assert large["body"]["predictions"][0]["class"] == small["body"]["predictions"][0]["class"]


def test_bad_requests_get_4xx_with_a_message(trained, served_model, tmp_path):
    jpg = next((trained["data"] / "test").rglob("*.jpg")).read_bytes()
    cases = [
        (("text/csv", b"1,2,3"), 415, "unsupported content type"),
        (("image/jpeg", b"this is not a jpeg"), 400, "not an image"),
        (("application/json", b"{not json"), 400, "not valid JSON"),
        (("application/json", b'{"image": "%%%not-base64"}'), 400, "not valid base64"),
        (("application/json", b'{"image": "https://example.com/dog.jpg"}'), 400,
         "URLs are not fetched"),
        (("application/json", b'{"images": []}'), 400, "no images"),
        (("application/json", b'{"pictures": "x"}'), 400, '"image"'),
        (("application/json", json.dumps({"image": base64.b64encode(jpg).decode(),
                                          "top_k": 0}).encode()), 400, "top_k"),
        (("image/jpeg", jpg, "text/csv"), 406, "accept application/json"),
    ]
    results = invoke(served_model, [c[0] for c in cases], tmp_path)
    for (request, status, message), result in zip(cases, results):
        assert result["status"] == status, (request[0], result)
        assert message in result["body"], (request[0], result["body"][:200])
    # an empty body: our handler answers 400 (the toolkit never calls us for it on a server)
    sys.path.insert(0, str(served_model / "code"))
    try:
        import inference

        with pytest.raises(inference.RequestError) as err:
            inference.input_fn(b"", "image/jpeg")
        assert err.value.status_code == 400 and "empty" in str(err.value)
    finally:
        sys.path.remove(str(served_model / "code"))


def test_serving_repeats_the_preprocessing_evaluation_scored(trained, served_model, tmp_path):
    """Serving parity: evaluation scores what preprocess.py stored (Lanczos to the preprocess
    size, JPEG q95, then the evaluation resize); an upload gets the same two resizes, so its
    answer is the evaluation's for the same photo."""
    import shutil

    from conftest import make_image_folder

    from breedkit.images import as_stored

    raw = make_image_folder(tmp_path / "raw", 4, size=(300, 200), seed=7)
    stored = tmp_path / "stored"
    proc = run_script("preprocess.py", "--input-dir", raw, "--output-dir", stored,
                      "--image-size", "37", "--valid-ratio", "0", "--test-ratio", "0")
    assert proc.returncode == 0, proc.stderr
    photos = sorted(raw.rglob("*.jpg"))
    for photo in photos:  # preprocess.py stores exactly what serving recomputes
        kept = stored / "train" / photo.parent.name / photo.name
        assert kept.read_bytes() == as_stored(photo.read_bytes(), 37)
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--test-dir",
                      stored / "train", "--output-dir", tmp_path / "evaluation",
                      "--bootstrap-rounds", "0")
    assert proc.returncode == 0, proc.stderr
    with open(tmp_path / "evaluation" / "predictions.csv") as fh:
        evaluated = {r["file"]: float(r["probability"]) for r in csv.DictReader(fh)}

    parity = tmp_path / "parity-model"
    shutil.copytree(served_model, parity)
    config = json.loads((parity / "model_config.json").read_text())
    (parity / "model_config.json").write_text(json.dumps({**config, "preprocess_size": 37}))
    requests = [("image/jpeg", p.read_bytes()) for p in photos]
    names = [f"{p.parent.name}/{p.name}" for p in photos]
    served = [r["body"]["predictions"][0]["probability"]
              for r in invoke(parity, requests, tmp_path)]
    for name, probability in zip(names, served):
        assert probability == pytest.approx(evaluated[name], abs=1e-4), name
    # resized straight to the evaluation size (before; a model without preprocess_size), the
    # answers are those of other pixels
    straight = [r["body"]["predictions"][0]["probability"]
                for r in invoke(served_model, requests, tmp_path)]
    assert max(abs(a - evaluated[n]) for a, n in zip(straight, names)) > 1e-4
