"""A local endpoint captures its traffic as SageMaker does, and ``pipelines.monitor`` judges it
against the baseline registered with the version it serves."""

from __future__ import annotations

import io
import json
import time

import pytest
import requests
from PIL import Image, ImageEnhance

from conftest import run_script

from pipelines import monitor
from pipelines.deploy import cli as deploy
from pipelines.deploy.endpoints import Endpoints
from pipelines.registry import LocalRegistry
from test_deploy_local import home  # noqa: F401 - the fixture `monitored` builds on

GROUP = "DogBreedModels"


@pytest.fixture
def monitored(home, trained, tmp_path):
    """A local home and a model archive (test_deploy_local), and the model's drift baseline
    as Evaluate writes it."""
    evaluation = tmp_path / "evaluation"
    proc = run_script("evaluate.py", "--model-dir", trained["model"], "--valid-dir",
                      trained["data"] / "valid", "--test-dir", trained["data"] / "test",
                      "--output-dir", evaluation, "--bootstrap-rounds", "0")
    assert proc.returncode == 0, proc.stderr
    return {**home, "baseline": evaluation / "baseline.json"}


def send(url: str, blobs: list[bytes]) -> None:
    for blob in blobs:
        response = requests.post(url + "/invocations", data=blob,
                                 headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert response.status_code == 200, response.text


def captured(home, name: str) -> int:
    return sum(len(p.read_text().splitlines())
               for p in (home / "data-capture" / name).rglob("*.jsonl"))


def wait_captured(home, name: str, count: int) -> None:
    deadline = time.time() + 10
    while captured(home, name) < count and time.time() < deadline:
        time.sleep(0.1)
    assert captured(home, name) == count


def darkened(path) -> bytes:
    buffer = io.BytesIO()
    ImageEnhance.Brightness(Image.open(path)).enhance(0.3).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def test_a_local_endpoint_fed_shifted_traffic_shows_drift(monitored, capsys):
    registry = LocalRegistry(monitored["home"])
    registry.register(GROUP, str(monitored["archive"]), approval_status="Approved",
                      lineage={"drift_baseline": str(monitored["baseline"])})
    assert deploy.main(["--local", "--home", str(monitored["home"])]) == 0
    staging = Endpoints(monitored["home"]).get("dogbreed-staging")
    name = "dogbreed-staging"
    valid = sorted((monitored["data"] / "valid").rglob("*.jpg"))

    # the valid split itself: what the baseline was made of
    send(staging.url, [p.read_bytes() for p in valid])
    wait_captured(monitored["home"], name, len(valid) + 1)  # and the deploy's smoke request
    files = list((monitored["home"] / "data-capture" / name / "AllTraffic").rglob("*.jsonl"))
    assert files and all(len(f.relative_to(monitored["home"] / "data-capture").parts) == 7
                         for f in files)  # <endpoint>/AllTraffic/yyyy/mm/dd/hh/<file>
    record = json.loads(files[0].read_text().splitlines()[-1])
    assert record["captureData"]["endpointInput"]["encoding"] == "BASE64"
    assert '"predictions"' in record["captureData"]["endpointOutput"]["data"]
    capsys.readouterr()
    assert monitor.main([name, "--home", str(monitored["home"]), "--fail-on-drift",
                         "--output-dir", str(monitored["home"] / "m1")]) == 0
    out = capsys.readouterr().out
    assert f"{name} serves {GROUP} version 1" in out and "verdict: no drift" in out, out
    # the window starts when the version went live (to the second: the deploy's own smoke
    # request, a moment before, may share that second)
    report = json.loads((monitored["home"] / "m1" / "monitor.json").read_text())
    assert report["requests"] in (len(valid), len(valid) + 1)
    assert report["window"]["since"] == staging.updated_at.replace("+00:00", "Z")

    # the same images darkened: the window now holds both, and drifts in brightness
    send(staging.url, [darkened(p) for p in valid] * 2)
    wait_captured(monitored["home"], name, 3 * len(valid) + 1)
    assert monitor.main([name, "--home", str(monitored["home"]), "--fail-on-drift",
                         "--output-dir", str(monitored["home"] / "m2")]) == monitor.DRIFT_EXIT
    out = capsys.readouterr().out
    assert "verdict: DRIFT" in out and "input_drift" in out, out
    report = json.loads((monitored["home"] / "m2" / "monitor.json").read_text())
    assert report["inputs"]["brightness"]["drift"] is True
    assert (monitored["home"] / "m2" / "monitor.html").is_file()


def test_capture_can_be_turned_down_or_off_per_deploy(monitored):
    registry = LocalRegistry(monitored["home"])
    registry.register(GROUP, str(monitored["archive"]), approval_status="Approved",
                      lineage={"drift_baseline": str(monitored["baseline"])})
    assert deploy.main(["--local", "--home", str(monitored["home"]), "--capture-percent", "0"]) == 0
    staging = Endpoints(monitored["home"]).get("dogbreed-staging")
    send(staging.url, [p.read_bytes() for p in sorted((monitored["data"] / "valid").rglob("*.jpg"))])
    time.sleep(0.5)
    assert not (monitored["home"] / "data-capture").exists()
    with pytest.raises(SystemExit):
        deploy.main(["--local", "--home", str(monitored["home"]), "--capture-percent", "150"])


def test_monitoring_an_unknown_endpoint_or_a_version_without_baseline_is_one_line(monitored, capsys):
    assert monitor.main(["dogbreed-nope", "--home", str(monitored["home"])]) == 2
    assert "no local endpoint named dogbreed-nope" in capsys.readouterr().err
    LocalRegistry(monitored["home"]).register(GROUP, str(monitored["archive"]), approval_status="Approved")
    assert deploy.main(["--local", "--home", str(monitored["home"])]) == 0
    assert monitor.main(["dogbreed-staging", "--home", str(monitored["home"])]) == 2
    assert "version 1 has no drift baseline" in capsys.readouterr().err
