"""Local deployment: approved version -> staging -> smoke test -> prod, blue/green, idempotent."""

from __future__ import annotations

import shlex
import tarfile

import pytest
import requests

from pipelines.deploy import cli as deploy
from pipelines.deploy import endpoints as endpoint
from pipelines.deploy.endpoints import Endpoints
from pipelines.registry import LocalRegistry

GROUP = "DogBreedModels"


@pytest.fixture
def home(tmp_path, trained):
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for item in sorted(trained["model"].iterdir()):
            tar.add(item, arcname=item.name)
    yield {"home": tmp_path / "home", "archive": archive, "data": trained["data"]}
    for e in Endpoints(tmp_path / "home").all():  # never leave servers behind
        endpoint.stop(e.pid)


def cli(home, *args):
    return deploy.main(["--local", "--home", str(home["home"]), *args])


def test_deploy_staging_then_prod_idempotent_and_blue_green(home, capsys, tmp_path):
    registry = LocalRegistry(home["home"])
    registry.register(GROUP, str(home["archive"]))
    assert cli(home) == 0
    assert "no Approved version" in capsys.readouterr().out
    assert cli(home, "--stage", "prod") == 1
    assert "deploy to staging first" in capsys.readouterr().err

    registry.set_status(GROUP, 1, "Approved")
    assert cli(home) == 0
    assert "dogbreed-staging: DogBreedModels version 1 InService" in capsys.readouterr().out
    staging = Endpoints(home["home"]).get("dogbreed-staging")
    assert staging.version == 1 and requests.get(staging.url + "/ping").status_code == 200
    assert cli(home) == 0
    assert "already serves DogBreedModels version 1" in capsys.readouterr().out

    assert cli(home, "--stage", "prod") == 0
    prod = Endpoints(home["home"]).get("dogbreed-prod")
    assert prod.version == 1 and prod.url != staging.url

    # endpoint CLI: list and invoke
    assert endpoint.main(["--home", str(home["home"]), "list"]) == 0
    out = capsys.readouterr().out
    assert "dogbreed-prod" in out and "InService" in out and "v1" in out
    jpg = next((home["data"] / "test").rglob("*.jpg"))
    assert endpoint.main(["--home", str(home["home"]), "invoke", "dogbreed-prod", str(jpg)]) == 0
    assert '"predictions"' in capsys.readouterr().out

    # a newer approved version whose serving code is broken fails its smoke test:
    broken = tmp_path / "broken.tar.gz"
    code = tmp_path / "inference.py"
    code.write_text("def model_fn(d):\n    return None\n"
                    "def input_fn(b, c):\n    return {'images': [b]}\n"
                    "def predict_fn(d, m):\n    return [{'nonsense': 1}]\n"
                    "def output_fn(p, a):\n    import json; return json.dumps(p)\n")
    with tarfile.open(broken, "w:gz") as tar:
        tar.add(code, arcname="code/inference.py")
    registry.register(GROUP, str(broken))
    registry.set_status(GROUP, 2, "Approved")
    assert cli(home) == 1
    err = capsys.readouterr().err
    assert "smoke test of dogbreed-staging version 2 failed" in err
    assert "version 1 keeps serving" in err
    staging_after = Endpoints(home["home"]).get("dogbreed-staging")
    assert staging_after.version == 1 and staging_after.pid == staging.pid
    assert requests.get(staging.url + "/ping").status_code == 200

    assert endpoint.main(["--home", str(home["home"]), "delete", "dogbreed-staging"]) == 0
    assert Endpoints(home["home"]).get("dogbreed-staging") is None
    with pytest.raises(requests.ConnectionError):
        requests.get(staging.url + "/ping", timeout=2)
    assert endpoint.main(["--home", str(home["home"]), "delete", "nope"]) == 2
    assert "no local endpoint named nope" in capsys.readouterr().err



def test_invoking_an_endpoint_whose_server_is_gone_is_one_clear_line(tmp_path, capsys):
    from pipelines.deploy.endpoints import Endpoint, free_port

    jpg = tmp_path / "dog.jpg"
    jpg.write_bytes(b"\xff\xd8 not really")
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    Endpoints(tmp_path).put(Endpoint("dogbreed-staging", url, 2**22 + 1, GROUP, 3, "m.tar.gz",
                                     "log", "2026-11-22T00:00:00+00:00"))
    assert endpoint.main(["--home", str(tmp_path), "invoke", "dogbreed-staging", str(jpg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: dogbreed-staging at {url} is not answering")
    assert "python -m pipelines.deploy --local" in err and "Traceback" not in err


def test_watch_deploys_each_newly_approved_version(home, tmp_path):
    import subprocess
    import sys
    import time

    from conftest import ROOT

    registry = LocalRegistry(home["home"])
    registry.register(GROUP, str(home["archive"]))
    watcher = subprocess.Popen([sys.executable, "-m", "pipelines.deploy", "--local", "--watch",
                                "--interval", "0.5", "--home", str(home["home"])], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(2)
        assert Endpoints(home["home"]).get("dogbreed-staging") is None  # nothing approved yet
        registry.set_status(GROUP, 1, "Approved")
        for _ in range(300):
            staged = Endpoints(home["home"]).get("dogbreed-staging")
            if staged is not None:
                break
            time.sleep(0.2)
        assert staged is not None and staged.version == 1
        assert requests.get(staged.url + "/ping").status_code == 200
    finally:
        watcher.terminate()
        watcher.wait(timeout=30)


def test_rejecting_the_live_version_rolls_back_and_outputs_describe_it(home, capsys, tmp_path):
    registry = LocalRegistry(home["home"])
    metrics = {"multiclass_classification_metrics": {"accuracy": {"value": 0.91}}}
    for _ in range(2):
        registry.register(GROUP, str(home["archive"]), metrics=metrics,
                          approval_status="Approved")
    out = tmp_path / "deploy.env"
    assert cli(home, "--outputs", str(out)) == 0
    assert Endpoints(home["home"]).get("dogbreed-staging").version == 2
    values = dict(line.split("=", 1) for line in shlex.split(out.read_text()))
    assert values == {"MODEL_PACKAGE_GROUP": GROUP, "MODEL_PACKAGE_VERSION": "2",
                      "MODEL_PACKAGE_ARN": "", "VALIDATION_ACCURACY": "unknown",
                      "TEST_ACCURACY": "0.91", "ENDPOINT_NAME": "dogbreed-staging"}

    registry.set_status(GROUP, 2, "Rejected")
    assert cli(home) == 0  # back to the newest version still approved
    staged = Endpoints(home["home"]).get("dogbreed-staging")
    assert staged.version == 1 and requests.get(staged.url + "/ping").status_code == 200
    capsys.readouterr()

    registry.set_status(GROUP, 1, "Rejected")
    out.unlink()
    assert cli(home, "--outputs", str(out)) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("error: dogbreed-staging serves DogBreedModels version 1, which is Rejected "
                   "now, and no Approved version remains: the endpoint is left as it is; "
                   "approve a version and deploy again")
    assert Endpoints(home["home"]).get("dogbreed-staging").pid == staged.pid  # left as it is
    assert not out.exists()


def test_expect_version_is_refused_locally(tmp_path, capsys):
    assert deploy.main(["--local", "--home", str(tmp_path), "--stage", "prod",
                        "--expect-version", "3"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --expect-version is for the SageMaker deploy pipeline")
