"""Faults of the local state: damaged SQLite stores, a full disk, a weights file that is more
than tensors. Each is one clear line naming the file or folder and what to do; nothing already
recorded is lost."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import pytest

from pipelines import registry as registry_cli
from pipelines import run
from pipelines.deploy import cli as deploy
from pipelines.deploy import endpoints as endpoint
from pipelines.local import engine as engine_module
from pipelines.local import jobs
from pipelines.local.store import Store
from pipelines.registry import LocalRegistry

GROUP = "DogBreedModels"
TINY = {"BaseModel": "resnet18", "Pretrained": "false", "ImageSize": 16,
        "PreprocessImageSize": 16, "TuningEpochs": 1, "MaxTuningJobs": 1,
        "MaxParallelTuningJobs": 1, "Epochs": 1, "AccuracyThreshold": 0.0}


def local_run(home: Path, data: Path) -> int:
    return run.main(["--local", "--home", str(home), "--no-debugger-rules", "--no-profiler",
                     f"--param=InputDataUrl={data}",
                     *[f"--param={k}={v}" for k, v in TINY.items()]])


def damage(path: Path, how: str) -> None:
    """Fold the write-ahead log in, then truncate the file or overwrite its start."""
    db = sqlite3.connect(path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(b"this is not a database at all " * 200)


def one_error_line(err: str, path: Path) -> str:
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"error: {path} is damaged ("), lines[0]
    return lines[0]


def test_a_truncated_engine_store_is_one_line_before_any_step_runs(tmp_path, capsys):
    home = tmp_path / "home"
    store = Store(home)
    for i in range(300):  # several pages, so that half of the file is a broken database
        store.remember("DogBreedBuild", f"Step{i}", f"key{i}" * 20, "x", {"n": "y" * 200})
    damage(store.path, "truncate")
    assert local_run(home, tmp_path / "nowhere") == 2
    line = one_error_line(capsys.readouterr().err, store.path)
    assert f"mv {store.path} {store.path}.damaged" in line
    assert not (home / "pipelines").exists()  # no step ran
    assert run.main(["--local", "--home", str(home), "--list"]) == 2
    one_error_line(capsys.readouterr().err, store.path)


def test_a_garbage_registry_is_refused_before_any_step_and_restored_from_its_backup(
        tmp_path, capsys):
    home = tmp_path / "home"
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"model")
    registry = LocalRegistry(home)
    registry.register(GROUP, str(archive))
    registry.set_status(GROUP, 1, "Approved", "looked fine")
    damage(registry.path, "garbage")

    assert local_run(home, tmp_path / "nowhere") == 2
    line = one_error_line(capsys.readouterr().err, registry.path)
    assert "file is not a database" in line
    assert f"python -m pipelines.registry --home {home} restore" in line
    assert not (home / "pipelines").exists()  # refused before Preprocess, not at RegisterModel

    home_arg = ["--home", str(home)]
    assert registry_cli.main([*home_arg, "list"]) == 2
    one_error_line(capsys.readouterr().err, registry.path)
    assert deploy.main(["--local", *home_arg]) == 2
    one_error_line(capsys.readouterr().err, registry.path)

    assert registry_cli.main([*home_arg, "restore"]) == 0
    assert "restored" in capsys.readouterr().out
    assert (home / "registry.sqlite.damaged").read_bytes().startswith(b"this is not")
    (package,) = LocalRegistry(home).list(GROUP)
    assert (package.version, package.approval_status, package.approval_description) == \
        (1, "Approved", "looked fine")


def test_a_damaged_endpoints_store_is_one_line(tmp_path, capsys):
    home = tmp_path / "home"
    path = endpoint.Endpoints(home).path
    damage(path, "garbage")
    assert endpoint.main(["--home", str(home), "list"]) == 2
    line = one_error_line(capsys.readouterr().err, path)
    assert "python -m pipelines.deploy.endpoints clean" in line


def test_a_full_disk_is_one_line_and_the_failure_is_recorded_at_the_next_start(
        tmp_path, capsys, monkeypatch, image_folder):
    home = tmp_path / "home"

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    def records_fail(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(jobs, "run_processing", no_space)
    monkeypatch.setattr(Store, "end_step", records_fail)
    monkeypatch.setattr(Store, "end_execution", records_fail)
    assert local_run(home, image_folder) == 1
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert f"no space left on device under {home}" in captured.out
    assert "recorded as Failed at the next start" in captured.out
    monkeypatch.undo()

    (execution,) = Store(home).executions()
    assert execution["status"] == "Executing"  # nothing could be written then
    (failed,) = Store(home).fail_orphans()
    record = Store(home).execution(failed["id"])
    assert record["status"] == "Failed"
    assert record["error"].startswith(f"no space left on device under {home}")
    assert "died" not in record["error"]
    assert {s["status"] for s in record["steps"]} == {"Failed"}


def test_a_job_step_does_not_start_without_free_space(tmp_path, capsys, monkeypatch,
                                                     image_folder):
    home = tmp_path / "home"
    monkeypatch.setattr(engine_module, "free_bytes", lambda path: 100 * 2**20)
    assert local_run(home, image_folder) == 1
    out = capsys.readouterr().out
    assert "[Preprocess] failed in" in out
    assert f"only 100 MB free under {home}, and a job step needs 512 MB to start" in out
    (execution,) = Store(home).executions()
    assert execution["status"] == "Failed" and "only 100 MB free" in execution["error"]
    assert not (home / "pipelines" / "DogBreedBuild" / execution["id"] / "Preprocess" /
                "job").exists()


@pytest.fixture
def image_folder(tmp_path):
    from conftest import make_image_folder

    return make_image_folder(tmp_path / "data", 6, size=(24, 20))


def test_a_weights_file_holding_more_than_tensors_is_refused_without_torchs_advice(tmp_path):
    import torch

    from breedkit.contract import UserError
    from breedkit.model import load_state

    class Payload:
        def __reduce__(self):
            return (print, ("this would have run",))

    weights = tmp_path / "model.pth"
    torch.save({"fc.weight": Payload()}, weights)
    with pytest.raises(UserError) as caught:
        load_state(weights)
    message = str(caught.value)
    assert message.startswith(f"{weights} holds more than tensors")
    assert "not loaded" in message and "(it names print)" in message
    assert "weights_only=False" not in message and "`False`" not in message
    assert "add_safe_globals" not in message and "trust" not in message
    torch.save({"fc.weight": torch.zeros(2)}, weights)
    assert load_state(weights)["fc.weight"].shape == (2,)


def test_restore_leaves_a_healthy_registry_alone_unless_forced(tmp_path, capsys):
    home = tmp_path / "home"
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(b"model")
    registry = LocalRegistry(home)
    registry.register(GROUP, str(archive))
    registry.register(GROUP, str(archive))
    assert registry_cli.main(["--home", str(home), "restore"]) == 2
    assert "is not damaged" in capsys.readouterr().err
    assert registry_cli.main(["--home", str(home), "restore", "--force"]) == 0
    assert len(LocalRegistry(home).list(GROUP)) == 2  # the backup of the last change


def test_an_archive_whose_registered_copy_is_gone_can_be_registered_again(tmp_path):
    registry = LocalRegistry(tmp_path / "home")
    first, second = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    first.write_bytes(b"same model")
    second.write_bytes(b"same model")
    package, created = registry.register_once(GROUP, str(first))
    assert created and registry.register_once(GROUP, str(second)) == (package, False)
    first.unlink()
    again, created = registry.register_once(GROUP, str(second))
    assert created and again.version == 2 and again.model_data == str(second)


def test_a_full_disk_before_the_execution_starts_is_one_line(tmp_path, capsys, monkeypatch,
                                                            image_folder):
    home = tmp_path / "home"

    def records_fail(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(Store, "new_execution", records_fail)
    assert local_run(home, image_folder) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: no space left on device under {home}") and \
        "Traceback" not in err


def test_a_damaged_weights_file_is_not_called_a_pickle_that_runs_code(tmp_path):
    from breedkit.contract import UserError
    from breedkit.model import load_state

    weights = tmp_path / "model.pth"
    weights.write_bytes(b"garbage: this is not a torch file")
    with pytest.raises(UserError, match=r"cannot read .*model.pth: it is not a weights file"):
        load_state(weights)
