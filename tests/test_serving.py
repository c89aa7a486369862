"""The local endpoint: SageMaker's serving contract over HTTP, batching, and bad requests."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import ROOT
from pipelines.deploy.endpoints import free_port


def start_server(model_data, tmp_path, *extra):
    port = free_port()
    log = open(tmp_path / f"server-{port}.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.deploy.server", "--model-data",
                             str(model_data), "--port", str(port), *extra], cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if requests.get(url + "/ping", timeout=1).status_code in (200, 503):
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    return proc, url


@pytest.fixture(scope="module")
def endpoint(trained, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serving")
    archive = tmp / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(trained["model"].iterdir()):
            tar.add(item, arcname=item.name)
    proc, url = start_server(archive, tmp, "--max-wait-ms", "20")
    for _ in range(200):
        if requests.get(url + "/ping", timeout=2).status_code == 200:
            break
        time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_invocations_with_jpeg_png_and_json(endpoint, trained, tmp_path):
    from PIL import Image

    jpg = sorted((trained["data"] / "test").rglob("*.jpg"))[0]
    with Image.open(jpg) as img:
        img.save(tmp_path / "x.png")
    r = requests.post(endpoint + "/invocations", data=jpg.read_bytes(),
                      headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200
    (pred,) = r.json()["predictions"]
    assert pred["class"] == jpg.parent.name  # the model learned this task
    r = requests.post(endpoint + "/invocations", data=(tmp_path / "x.png").read_bytes(),
                      headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["predictions"][0]["class"] == pred["class"]
    # a large body is decoded in a worker thread rather than on the event loop: same answer
    from pipelines.deploy.server import INLINE_DECODE_MAX_BYTES

    with Image.open(jpg) as img:
        img.resize((img.width * 16, img.height * 16), Image.Resampling.NEAREST).save(
            tmp_path / "big.png", compress_level=0)
    big = (tmp_path / "big.png").read_bytes()
    assert len(big) > INLINE_DECODE_MAX_BYTES
    r = requests.post(endpoint + "/invocations", data=big, headers={"Content-Type": "image/png"})
    assert r.status_code == 200 and r.json()["predictions"][0]["class"] == pred["class"]
    body = {"images": [base64.b64encode(jpg.read_bytes()).decode()] * 2, "top_k": 2}
    r = requests.post(endpoint + "/invocations", json=body)
    assert r.status_code == 200
    predictions = r.json()["predictions"]
    assert len(predictions) == 2 and all(len(p["top_k"]) == 2 for p in predictions)


def test_bad_requests_get_4xx_json_and_the_server_keeps_serving(endpoint, trained):
    jpg = sorted((trained["data"] / "test").rglob("*.jpg"))[0].read_bytes()
    cases = [
        ({"Content-Type": "text/plain"}, b"hello", 415),
        ({"Content-Type": "image/jpeg"}, b"not an image", 400),
        ({"Content-Type": "image/jpeg"}, b"", 400),
        ({"Content-Type": "application/json"}, b'{"image": "http://x/y.jpg"}', 400),
        ({"Content-Type": "image/jpeg", "Accept": "text/csv"}, jpg, 406),
        ({"Content-Type": "image/jpeg"}, b"\xff" * (17 * 2**20), 413),
    ]
    for headers, body, status in cases:
        r = requests.post(endpoint + "/invocations", data=body, headers=headers)
        assert r.status_code == status, (headers, r.text[:200])
        assert r.json()["status"] == status and r.json()["error"]
    assert requests.get(endpoint + "/ping").status_code == 200
    r = requests.post(endpoint + "/invocations", data=jpg, headers={"Content-Type": "image/jpeg"})
    assert r.status_code == 200


def test_concurrent_requests_are_batched_and_answered_separately(endpoint, trained):
    files = sorted((trained["data"] / "test").rglob("*.jpg"))[:16]

    def call(path):
        r = requests.post(endpoint + "/invocations", data=path.read_bytes(),
                          headers={"Content-Type": "image/jpeg"})
        return path, r.status_code, r.json()["predictions"][0]["class"], int(
            r.headers["X-Batch-Images"])

    serial = {p: call(p)[2] for p in files}
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, files))
    assert all(code == 200 for _, code, _, _ in results)
    assert {p: c for p, _, c, _ in results} == serial  # each client gets its own answer
    assert max(batch for *_, batch in results) > 1  # concurrent requests shared a forward pass


def test_ping_reports_a_model_that_failed_to_load(tmp_path):
    broken = tmp_path / "broken"
    (broken / "code").mkdir(parents=True)
    (broken / "code/inference.py").write_text("def model_fn(d):\n    raise ValueError('bad')\n")
    proc, url = start_server(broken, tmp_path)
    try:
        for _ in range(100):
            r = requests.get(url + "/ping", timeout=2)
            if "failed" in r.text:
                break
            time.sleep(0.1)
        assert r.status_code == 503 and "model failed to load" in r.json()["error"]
        r = requests.post(url + "/invocations", data=b"x", headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def handler_model_dir(tmp_path, handlers: str):
    """A model folder whose code/inference.py is ``handlers`` (a stand-in for the model)."""
    model = tmp_path / "model"
    (model / "code").mkdir(parents=True)
    (model / "code/inference.py").write_text(handlers)
    return model


FLAKY_MODEL = '''
import json, time

def model_fn(model_dir):
    return None

def input_fn(body, content_type):
    time.sleep(0.05)  # decoding takes a while: concurrent requests meet in one batch
    return {"images": [body]}

def predict_fn(data, model):
    if b"poison" in data["images"]:
        raise ValueError("the forward pass cannot take one of these images")
    return [{"echo": body.decode(), "top_k": []} for body in data["images"]]

def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction})
'''


def test_a_request_the_model_fails_on_fails_alone_not_its_batch(tmp_path):
    model = handler_model_dir(tmp_path, FLAKY_MODEL)
    proc, url = start_server(model, tmp_path, "--max-wait-ms", "300")

    def call(body):
        r = requests.post(url + "/invocations", data=body,
                          headers={"Content-Type": "image/jpeg"}, timeout=30)
        return body, r.status_code, r.json()

    try:
        bodies = [f"good {i}".encode() for i in range(7)] + [b"poison"]
        with ThreadPoolExecutor(8) as pool:
            results = [r for _ in range(3) for r in pool.map(call, bodies)]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    for body, status, answer in results:
        if body == b"poison":
            assert status == 500 and "cannot take" in answer["error"]
        else:
            assert status == 200 and answer["predictions"] == [{"echo": body.decode(),
                                                                "top_k": []}]
    # the poison did share batches with good requests: they were retried one by one
    assert "running each alone" in next(tmp_path.glob("server-*.log")).read_text()


def test_gifs_and_nested_json_among_good_requests_fail_nobody_else(endpoint, trained, tmp_path):
    """15 clients send good JPEGs, one sends hostile bodies: every good request is answered."""
    from PIL import Image

    jpg = sorted((trained["data"] / "test").rglob("*.jpg"))[0]
    with Image.open(jpg) as img:
        frames = [img.convert("RGB"), img.convert("RGB").rotate(90)]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    gif = buf.getvalue()
    hostile = {
        "gif as image/png": (gif, "image/png", 200),
        "gif in JSON": (json.dumps({"image": base64.b64encode(gif).decode()}).encode(),
                        "application/json", 200),
        "nested JSON": (b'{"image": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
                        "application/json", 400),
    }

    def call(job):
        body, content_type = job
        r = requests.post(endpoint + "/invocations", data=body,
                          headers={"Content-Type": content_type}, timeout=60)
        return r.status_code, r.json()

    jobs = [(jpg.read_bytes(), "image/jpeg")] * 15
    for name, (body, content_type, status) in hostile.items():
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(call, [*jobs, (body, content_type)]))
        assert [code for code, _ in results[:15]] == [200] * 15, name
        assert results[15][0] == status, (name, results[15][1])
    # the animation is served as preprocessing would have stored it: its first frame
    buf = io.BytesIO()
    Image.open(io.BytesIO(gif)).convert("RGB").save(buf, "PNG")
    first_frame = call((buf.getvalue(), "image/png"))[1]["predictions"][0]
    assert call((gif, "image/png"))[1]["predictions"][0] == first_frame


THREAD_REPORTING_MODEL = '''
import json, torch

def model_fn(model_dir):
    torch.ones(1000, 1000).sum()  # loading runs torch in the model thread
    return None

def input_fn(body, content_type):
    return {"images": [torch.get_num_threads()]}

def predict_fn(data, model):
    return [{"decode": n, "model": torch.get_num_threads(), "top_k": []} for n in data["images"]]

def output_fn(prediction, accept):
    return json.dumps({"predictions": prediction})
'''


def test_decode_threads_run_torch_on_one_core_and_the_forward_pass_on_all(tmp_path):
    """Decode threads must not bring OpenMP teams of their own to fight the forward pass's;
    nor must the event loop's thread, which decodes a lone small request itself (its team of
    every core, spinning after each resize, took 20 ms from a 40 ms resnet50 forward on 2
    cores: bench/endpoint.py)."""
    import torch

    model = handler_model_dir(tmp_path, THREAD_REPORTING_MODEL)
    proc, url = start_server(model, tmp_path)
    big = b"x" * (1024 * 1024)  # over the inline-decode size: decoded in a worker thread
    small = b"x" * 1024  # a lone small request: decoded on the event loop's thread
    try:
        answers = [requests.post(url + "/invocations", data=body, timeout=30,
                                 headers={"Content-Type": "image/jpeg"}).json()["predictions"][0]
                   for body in (small, big) * 3]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert all(a["decode"] == 1 for a in answers), answers
    assert all(a["model"] == torch.get_num_threads() for a in answers), answers
