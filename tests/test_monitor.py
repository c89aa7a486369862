"""scripts/monitor.py and breedkit.drift: captured traffic judged against a version's baseline.

A stand-in model (the generated classes differ by colour: the strongest channel is the class)
answers the traffic, so each case is fast and its expected verdict certain: traffic like the
valid split shows no drift; one class only, darkened images and another kind of image each
show drift in the measure they should.
"""

from __future__ import annotations

import io
import json
import random
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageEnhance

from conftest import CLASS_STYLES, ROOT, draw_example, read_json, run_script

from breedkit.capture import hour_dir, image_stats, make_record
from breedkit.drift import Thresholds, Window, class_test, compare, make_baseline, psi

CLASSES = sorted(CLASS_STYLES)
NOW = datetime(2026, 12, 6, 15, 30, tzinfo=timezone.utc)


def jpeg(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def images(n: int, seed: int, classes=CLASSES, size=(160, 120)) -> list[bytes]:
    rng = random.Random(seed)
    return [jpeg(draw_example(CLASS_STYLES[classes[i % len(classes)]], rng, size))
            for i in range(n)]


def stand_in_model(blob: bytes) -> np.ndarray:
    """Class probabilities: the generated classes are red, green and blue shapes."""
    rgb = np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"), dtype=np.float64)
    colour = rgb.reshape(-1, 3)
    strong = colour[np.ptp(colour, axis=1) > 60]  # the shape, not the grey background
    scores = strong.mean(axis=0) if len(strong) else np.ones(3)
    logits = (scores - scores.max()) / 40.0
    return np.exp(logits) / np.exp(logits).sum()


def baseline_of(blobs: list[bytes]) -> dict:
    probs = np.stack([stand_in_model(b) for b in blobs])
    return make_baseline(CLASSES, probs, [image_stats(b) for b in blobs], 32, "valid")


def answer(blob: bytes) -> str:
    p = stand_in_model(blob)
    top = int(p.argmax())
    return json.dumps({"predictions": [{"class": CLASSES[top], "index": top,
                                        "probability": round(float(p[top]), 6)}]})


def write_capture(root: Path, blobs: list[bytes], start: datetime = NOW - timedelta(minutes=50),
                  endpoint: str = "dogbreed-prod") -> Path:
    for i, blob in enumerate(blobs):
        when = start + timedelta(seconds=10 * i)
        folder = hour_dir(root, endpoint, when)
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "part.jsonl", "a") as fh:
            fh.write(json.dumps(make_record(blob, "image/jpeg", answer(blob), when=when)) + "\n")
    return root / endpoint


def window_of(blobs: list[bytes], folder: Path) -> Window:
    from breedkit.capture import read_events

    traffic = Window(len(CLASSES), 32)
    root = write_capture(folder, blobs)
    for event in read_events(sorted(root.rglob("*.jsonl")), []):
        traffic.add(event)
    return traffic


@pytest.fixture(scope="module")
def baseline():
    return baseline_of(images(150, seed=1))


def darken(blob: bytes, factor: float = 0.35) -> bytes:
    return jpeg(ImageEnhance.Brightness(Image.open(io.BytesIO(blob))).enhance(factor))


def other_data_set(n: int, seed: int) -> list[bytes]:
    """Not our classes at all: smooth colour gradients with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = np.linspace(0, 1, 160)[None, :, None]
        y = np.linspace(0, 1, 120)[:, None, None]
        base = rng.uniform(0.3, 1.0, 3) * (0.5 * x + 0.5 * y)
        noisy = np.clip(base + rng.normal(0, 0.08, (120, 160, 3)), 0, 1)
        out.append(jpeg(Image.fromarray((noisy * 255).astype(np.uint8))))
    return out


def test_traffic_like_the_valid_split_shows_no_drift(baseline, tmp_path):
    report = compare(baseline, window_of(images(150, seed=2), tmp_path), Thresholds())
    assert report["images"] == 150 and report["errors"] == 0
    assert report["verdicts"] == {"class_drift": False, "confidence_drift": False,
                                  "input_drift": False, "low_confidence": False,
                                  "error_rate": False}
    assert report["drift"] is False


def test_one_class_only_is_class_drift(baseline, tmp_path):
    report = compare(baseline, window_of(images(90, seed=3, classes=[CLASSES[0]]), tmp_path),
                     Thresholds())
    assert report["verdicts"]["class_drift"] is True and report["drift"] is True
    assert report["class_distribution"]["psi"] > 0.5 and report["class_distribution"]["p"] < 0.01
    assert report["class_distribution"]["most_changed"][0]["class"] == CLASSES[0]
    assert report["class_distribution"]["most_changed"][0]["share"] == 1.0


def test_darkened_images_are_input_drift_in_brightness(baseline, tmp_path):
    report = compare(baseline, window_of([darken(b) for b in images(120, seed=4)], tmp_path), Thresholds())
    assert report["verdicts"]["input_drift"] is True and report["drift"] is True
    brightness = report["inputs"]["brightness"]
    assert brightness["drift"] is True and brightness["mean"] < brightness["baseline_mean"] - 0.1


def test_another_data_set_drifts_in_confidence_and_inputs(baseline, tmp_path):
    report = compare(baseline, window_of(other_data_set(120, seed=5), tmp_path), Thresholds())
    assert report["drift"] is True
    assert report["verdicts"]["confidence_drift"] is True
    assert report["verdicts"]["low_confidence"] is True
    assert report["verdicts"]["input_drift"] is True


def test_a_small_window_has_measures_but_no_verdicts(baseline, tmp_path):
    report = compare(baseline, window_of(images(10, seed=6, classes=[CLASSES[0]]), tmp_path),
                     Thresholds(min_images=30))
    assert report["enough_traffic"] is False and report["drift"] is False
    assert set(report["verdicts"].values()) == {None}
    assert report["class_distribution"]["psi"] is not None


def test_class_test_is_calibrated_where_most_classes_are_rare():
    # 100 classes, a few hundred predictions: the chi-square distribution would not hold here
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(100))
    rejections = sum(class_test(rng.multinomial(800, p), rng.multinomial(200, p), 300,
                                seed)[1] < 0.05 for seed in range(40))
    assert rejections <= 6  # about 2 expected at alpha 0.05
    shifted = np.roll(p, 7)
    assert class_test(rng.multinomial(800, p), rng.multinomial(200, shifted), 300)[1] < 0.01
    assert psi(np.array([50, 50]), np.array([50, 50])) == pytest.approx(0.0)


def test_the_script_writes_its_report_page_and_metrics_line(tmp_path, baseline):
    capture = write_capture(tmp_path / "capture", images(40, seed=7) +
                            [darken(b) for b in images(60, seed=8)])
    # damaged lines: one not JSON, one not a record, and a truncated last record
    part = next(capture.rglob("*.jsonl"))
    with open(part, "a") as fh:
        fh.write("this is not json\n")
        fh.write('{"some": "object"}\n')
    last = sorted(capture.rglob("*.jsonl"))[-1]
    last.write_bytes(last.read_bytes() + b'{"captureData": {"endpointInput": {"da')
    (tmp_path / "baseline").mkdir()
    (tmp_path / "baseline" / "baseline.json").write_text(json.dumps(baseline))
    out = tmp_path / "out"
    proc = run_script("monitor.py", "--capture-dir", tmp_path / "capture",
                      "--baseline", tmp_path / "baseline", "--output-dir", out,
                      "--since", "1h", "--until", NOW.isoformat(), "--endpoint", "dogbreed-prod",
                      "--model-version", "3")
    assert proc.returncode == 0, proc.stderr
    report = read_json(out / "monitor.json")
    assert report["requests"] == 100 and report["drift"] is True
    assert report["inputs"]["brightness"]["drift"] is True
    reasons = {s["reason"].split(" (")[0].split(":")[0] for s in report["skipped"]}
    assert report["skipped_lines"] == 3, report["skipped"]
    assert reasons == {"not a JSON capture record", "not a capture record", "truncated"}
    metrics = [json.loads(line) for line in proc.stdout.splitlines()
               if line.startswith('{"dogbreed_monitor"')]
    assert len(metrics) == 1
    assert metrics[0]["EndpointName"] == "dogbreed-prod" and metrics[0]["ModelVersion"] == "3"
    assert metrics[0]["Drift"] == 1 and metrics[0]["Requests"] == 100
    assert "skipped 3 capture lines" in proc.stdout
    page = (out / "monitor.html").read_text()
    assert "DRIFT" in page and page.count("data:image/png;base64,") == 2


def test_an_empty_window_says_so(tmp_path, baseline):
    write_capture(tmp_path / "capture", images(20, seed=9), start=NOW - timedelta(hours=5))
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    proc = run_script("monitor.py", "--capture-dir", tmp_path / "capture",
                      "--baseline", tmp_path / "baseline.json", "--output-dir", tmp_path / "out",
                      "--since", "1h", "--until", NOW.isoformat())
    assert proc.returncode == 0, proc.stderr
    assert "no captured requests in this window" in proc.stdout
    report = read_json(tmp_path / "out" / "monitor.json")
    assert report["requests"] == 0 and report["drift"] is False
    assert report["capture_files"] == 0  # the hour folders outside the window are not read


@pytest.mark.parametrize("args, message", [
    (("--since", "yesterday"), "neither an ISO 8601 time"),
    (("--since", "2h", "--until", "2026-12-06T10:00:00Z", "--alpha", "2"), "bad threshold"),
    (("--baseline", "/nonexistent/baseline.json"), "no baseline at /nonexistent/baseline.json"),
])
def test_bad_arguments_are_one_line(tmp_path, baseline, args, message):
    (tmp_path / "capture").mkdir()
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    base = {"--capture-dir": tmp_path / "capture", "--baseline": tmp_path / "baseline.json",
            "--output-dir": tmp_path / "out"}
    given = dict(zip(args[::2], args[1::2]))
    merged = [str(x) for k, v in {**base, **given}.items() for x in (k, v)]
    proc = run_script("monitor.py", *merged)
    assert proc.returncode == 2
    assert proc.stderr.startswith("ERROR: ") and message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_json_requests_and_error_answers_are_read(tmp_path, baseline):
    import base64

    root = tmp_path / "capture"
    folder = hour_dir(root, "ep", NOW - timedelta(minutes=5))
    folder.mkdir(parents=True)
    blobs = images(40, seed=10)
    with open(folder / "a.jsonl", "w") as fh:
        for blob in blobs:
            body = json.dumps({"images": [base64.b64encode(blob).decode()]}).encode()
            fh.write(json.dumps(make_record(body, "application/json", answer(blob),
                                            when=NOW - timedelta(minutes=5))) + "\n")
        for _ in range(10):
            fh.write(json.dumps(make_record(b"x", "text/plain", json.dumps(
                {"error": "unsupported content type", "status": 415}),
                when=NOW - timedelta(minutes=4))) + "\n")
    from breedkit.capture import read_events

    traffic = Window(3, 32)
    for event in read_events([folder / "a.jsonl"], []):
        traffic.add(event)
    report = compare(baseline, traffic, Thresholds())
    assert report["requests"] == 50 and report["images"] == 40 and report["errors"] == 10
    assert report["error_rate"] == 0.2 and report["error_statuses"] == {"415": 10}
    assert report["verdicts"]["error_rate"] is True
    assert report["image_size"]["median_width"] == 160
    assert report["image_size"]["smaller_than_model_input"] == 0.0


def test_without_matplotlib_the_page_has_the_tables_alone(tmp_path, baseline):
    """The scheduled job runs in the version's inference image, which may lack matplotlib."""
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked for the test')\n")
    write_capture(tmp_path / "capture", images(40, seed=11))
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    proc = run_script("monitor.py", "--capture-dir", tmp_path / "capture",
                      "--baseline", tmp_path / "baseline.json", "--output-dir", tmp_path / "out",
                      "--until", NOW.isoformat(),
                      env={"PYTHONPATH": str(tmp_path / "blocker")})
    assert proc.returncode == 0, proc.stderr
    assert "matplotlib is not installed" in proc.stdout
    page = (tmp_path / "out" / "monitor.html").read_text()
    assert "no drift" in page and "data:image/png" not in page and "<table>" in page


def test_class_drift_judges_the_psi_above_what_chance_gives():
    """133 classes, 835 baseline images, 100 in the window: most of a raw PSI is sampling
    noise (about 0.5), so the raw figure can neither be compared across windows of other sizes
    nor guard a verdict; its excess over chance can."""
    rng = np.random.default_rng(1)
    names = [f"{i:03d}.Breed" for i in range(133)]
    p = np.full(133, 1 / 133)
    baseline = make_baseline(names, np.eye(133)[rng.choice(133, 835, p=p)],
                             [], 224, "valid")
    like, shifted = Window(133, 224), Window(133, 224)
    like.counts[:] = rng.multinomial(100, p)
    like.images = like.requests = 100
    shifted.counts[:5] = 20  # everything predicted as one of five classes
    shifted.images = shifted.requests = 100
    same = compare(baseline, like, Thresholds())["class_distribution"]
    assert same["psi"] > 0.3 and same["psi_chance"] > 0.3  # the raw figure is mostly noise
    assert same["psi_excess"] < 0.1 and same["drift"] is False
    moved = compare(baseline, shifted, Thresholds())["class_distribution"]
    assert moved["psi_excess"] > 1.0 and moved["drift"] is True


def test_the_image_sample_stays_uniform_when_images_do_not_decode():
    """Algorithm R: an unreadable image still takes its slot (then left out), or the items
    seen early would stay in the sample too long."""
    from breedkit.drift import Reservoir

    means = []
    for seed in range(20):
        sample = Reservoir(100, seed)
        for i in range(10_000):
            sample.offer(lambda i=i: None if i % 2 else i)
        means.append(np.mean(sample.items))
    assert abs(np.mean(means) - 5_000) < 400, np.mean(means)


def test_a_window_reads_the_hour_folder_after_it_and_lags_behind_its_end(tmp_path, baseline):
    """SageMaker names a capture file's folder by when the file was written, minutes after its
    first request; the scheduled job judges the hour that ended --lag before its run."""
    from breedkit.capture import capture_files

    root = tmp_path / "capture"
    late = hour_dir(root, "ep", NOW.replace(hour=16, minute=0))  # written at 16:0x
    late.mkdir(parents=True)
    blob = images(1, seed=12)[0]
    with open(late / "part.jsonl", "w") as fh:
        for minute in (14, 44, 59):  # requests of 15:14, 15:44, 15:59
            fh.write(json.dumps(make_record(blob, "image/jpeg", answer(blob), when=NOW.replace(
                hour=15, minute=minute))) + "\n")
    until = NOW.replace(hour=16, minute=0)
    assert capture_files(root, until - timedelta(hours=1), until) == [late / "part.jsonl"]
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    proc = run_script("monitor.py", "--capture-dir", root, "--baseline",
                      tmp_path / "baseline.json", "--output-dir", tmp_path / "out",
                      "--since", "1h", "--until", until.isoformat(), "--lag", "15m")
    assert proc.returncode == 0, proc.stderr
    report = read_json(tmp_path / "out" / "monitor.json")
    assert report["window"] == {"since": "2026-12-06T14:45:00Z", "until": "2026-12-06T15:45:00Z"}
    assert report["requests"] == 2  # 15:14 and 15:44; 15:59 belongs to the next run


def test_hostile_capture_lines_are_skipped_not_a_crash(tmp_path, monkeypatch):
    import breedkit.capture as capture

    monkeypatch.setattr(capture, "MAX_LINE_BYTES", 200_000)
    blob = images(1, seed=13)[0][:300]
    good = json.dumps(make_record(blob, "image/jpeg", answer(images(1, seed=13)[0]),
                                  when=NOW)) + "\n"
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"[" * 100_000 + b"\n" + b"x" * 500_000 + b"\n" + good.encode())
    skipped = []
    events = list(capture.read_events([path], skipped))
    assert len(events) == 1 and events[0].where == (str(path), 3)
    assert [s.line for s in skipped] == [1, 2]
    assert "nested too deeply" in skipped[0].reason and "over 200,000 bytes" in skipped[1].reason


def test_the_window_never_starts_before_the_version_was_deployed(tmp_path, baseline):
    """After a redeploy, the version before's traffic is not judged by this one's baseline."""
    root = tmp_path / "capture"
    blob = images(1, seed=14)[0]
    folder = hour_dir(root, "ep", NOW)
    folder.mkdir(parents=True)
    with open(folder / "part.jsonl", "w") as fh:
        for minute in (10, 20, 25):  # the old version served until 15:20
            fh.write(json.dumps(make_record(blob, "image/jpeg", answer(blob), when=NOW.replace(
                minute=minute))) + "\n")
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    proc = run_script("monitor.py", "--capture-dir", root, "--baseline",
                      tmp_path / "baseline.json", "--output-dir", tmp_path / "out",
                      "--until", NOW.isoformat(), "--not-before", "2026-12-06T15:20:00Z")
    assert proc.returncode == 0, proc.stderr
    report = read_json(tmp_path / "out" / "monitor.json")
    assert report["window"]["since"] == "2026-12-06T15:20:00Z" and report["requests"] == 2
    bad = run_script("monitor.py", "--capture-dir", root, "--baseline",
                     tmp_path / "baseline.json", "--output-dir", tmp_path / "out2",
                     "--not-before", "yesterday")
    assert bad.returncode == 2 and "--not-before 'yesterday' is not an ISO 8601 time" in bad.stderr


def test_the_files_the_deploy_uploads_are_all_the_job_imports(tmp_path, baseline):
    """The scheduled job runs monitor.py from the files the deploy uploads (CODE_FILES) alone:
    every breedkit module it imports must come from there, not from this installed project."""
    import subprocess
    import sys

    from pipelines.deploy.monitoring import CODE_FILES

    code = tmp_path / "code"
    for name in CODE_FILES:
        (code / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / "scripts" / name, code / name)
    write_capture(tmp_path / "capture", images(40, seed=15))
    (tmp_path / "baseline.json").write_text(json.dumps(baseline))
    driver = f"""
import runpy, sys
sys.argv = ["monitor.py", "--capture-dir", {str(tmp_path / 'capture')!r},
            "--baseline", {str(tmp_path / 'baseline.json')!r},
            "--output-dir", {str(tmp_path / 'out')!r}, "--until", {NOW.isoformat()!r}]
try:
    runpy.run_path({str(code / 'monitor.py')!r}, run_name="__main__")
except SystemExit as exc:
    assert not exc.code, exc.code
outside = sorted(name for name, module in sys.modules.items() if name.startswith("breedkit")
                 and not str(getattr(module, "__file__", "")).startswith({str(code)!r}))
print("OUTSIDE", outside)
"""
    proc = subprocess.run([sys.executable, "-c", driver], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "OUTSIDE []" in proc.stdout, proc.stdout[-2000:]
    assert read_json(tmp_path / "out" / "monitor.json")["requests"] == 40
