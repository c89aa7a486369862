"""Transfer on generated fine-grained data: does LP-FT beat fine-tuning from a random head?

    .venv/bin/python bench/transfer.py                         # 5 seeds, 30 epochs: ~6 min
    .venv/bin/python bench/transfer.py --seeds 3 --epochs 100  # a longer budget: ~12 min

Source task: tests/pretrained.py's resnet18, pretrained here on coloured shapes (yellow, cyan,
magenta, orange, white and black rectangles, discs and bars on grey, 32 px), planted where
torchvision looks for its ImageNet weights, so ``--pretrained true`` loads it offline. Target
task: 10 new fine-grained classes, triangles and rings in 5 close shades from slate blue to
plum (neighbouring shades 22 apart in red, each image's colour jittered by up to 8 per
channel), 10 training and 10 validation images per class. Three test splits of 30 images per
class: in distribution (flat grey backgrounds, as in training), and two backgrounds never seen
in training: stripes of two greys (texture), and a flat grey tinted by up to 20 per channel
(colour). Each seed draws new data; all arms of a seed share it, so differences are paired.

Every arm runs through the project's own code, in-process: scripts/features.py (4 views),
``train.py --mode linear-probe`` (breedkit.probe), ``train.py`` (the best epoch by valid
accuracy), scored as evaluate.py loads a model (center crop, fp32, no TTA):

  probe        the linear probe alone: the probed head on the frozen pretrained backbone
  ft           fine-tune from a random head: head 1e-3, backbone 1e-4 (train.py's defaults)
  lpft-probe   LP-FT with the probe's settings (the old TrainFinal): from the probed head,
               every layer at 0.1 x the probe's lr, the probe's batch, decay and smoothing
  lpft-own     LP-FT with its own settings (TrainFinal now): from the probed head, every
               layer at --backbone-lr 1e-4, batch 32, weight decay 0.05, smoothing 0.1
  scratch      ``--pretrained false``, lr 1e-3

Prints each seed's accuracies as it finishes, then mean +- sd per arm and split, and paired
differences (per seed: mean, min..max, the seeds the first arm wins). Measures; asserts nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # pretrained.py (the source task's backbone)
sys.path.insert(0, str(ROOT / "scripts"))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

import features as features_step  # noqa: E402  scripts/features.py
import pretrained  # noqa: E402
import train  # noqa: E402  scripts/train.py
from breedkit.data import ImageFolderDataset, make_loader  # noqa: E402
from breedkit.model import build_model, load_model, load_state, preprocessing  # noqa: E402
from breedkit.training import evaluate  # noqa: E402
from breedkit.transforms import eval_transform_for  # noqa: E402

SIZE = (44, 37)  # as preprocess.py stores images for a 32 px crop (shorter side 37)
LOW, HIGH = (60, 90, 170), (150, 70, 140)  # slate blue .. plum: none of the source's colours
SHADES, SHAPES = 5, ("triangle", "ring")
TINT = 20  # the out-of-distribution tint: each channel up to 20 off the grey
TESTS = ("test", "stripes", "tinted")  # in distribution, then two unseen backgrounds
ARMS = ("probe", "ft", "lpft-probe", "lpft-own", "scratch")
PAIRS = (("lpft-own", "ft"), ("lpft-own", "lpft-probe"), ("lpft-probe", "ft"),
         ("lpft-own", "probe"), ("ft", "scratch"))


def target_classes() -> list[tuple[str, tuple[int, ...], str]]:
    """(name, colour, shape): each shape in each of the shades from LOW to HIGH."""
    shades = [tuple(round(a + (b - a) * k / (SHADES - 1)) for a, b in zip(LOW, HIGH))
              for k in range(SHADES)]
    return [(f"{i:02d}.{shape}_shade{k}", shades[k], shape) for i, (shape, k) in enumerate(
        (shape, k) for shape in SHAPES for k in range(SHADES))]


def background(rng: random.Random, split: str) -> Image.Image:
    """Flat grey (the source task's and the training distribution); out of distribution,
    backgrounds never seen in training: stripes of two greys (texture), or a flat tint."""
    w, h = SIZE
    grey = rng.randint(60, 200)
    if split == "stripes":
        pixels = np.full((h, w, 3), grey, np.uint8)
        period, other = rng.randint(2, 5), rng.randint(60, 200)
        if rng.random() < 0.5:
            pixels[:, (np.arange(w) // period) % 2 == 1] = other
        else:
            pixels[(np.arange(h) // period) % 2 == 1] = other
        return Image.fromarray(pixels)
    if split == "tinted":
        return Image.new("RGB", SIZE, tuple(min(255, max(0, grey + rng.randint(-TINT, TINT)))
                                            for _ in range(3)))
    return Image.new("RGB", SIZE, (grey, grey, grey))


def draw(colour, shape, rng: random.Random, split: str) -> Image.Image:
    w, h = SIZE
    img = background(rng, split)
    fill = tuple(max(0, min(255, c + rng.randint(-8, 8))) for c in colour)
    x, y = rng.randint(0, w // 3), rng.randint(0, h // 3)
    box = [x, y, x + w // 2, y + h // 2]
    if shape == "triangle":
        ImageDraw.Draw(img).polygon([(x, box[3]), (box[2], box[3]), ((x + box[2]) // 2, y)],
                                    fill=fill)
    else:
        ImageDraw.Draw(img).ellipse(box, outline=fill, width=4)
    return img


def make_data(root: Path, seed: int, per_class: dict[str, int]) -> list[str]:
    classes = target_classes()
    for split, n in per_class.items():
        rng = random.Random(f"{seed}/{split}")
        for name, colour, shape in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                draw(colour, shape, rng, split).save(folder / f"{i:03d}.png")
    return [name for name, _, _ in classes]


def quiet(log, fn, argv):
    """Run a script's main() in-process, its output (epoch lines, logging) to the log file."""
    with contextlib.redirect_stdout(log):
        code = fn(argv)
    if code:
        raise RuntimeError(f"{fn.__module__} {' '.join(argv)} exited {code}")


def score(model, config, data: Path, class_names) -> dict[str, float]:
    """Accuracy on each test split, as evaluate.py transforms images (center crop), fp32."""
    out = {}
    for split in TESTS:
        dataset = ImageFolderDataset(data / split, class_names, eval_transform_for(config))
        loader = make_loader(dataset, 128, shuffle=False, workers=0)
        result = evaluate(model, loader, torch.nn.CrossEntropyLoss(), torch.device("cpu"))
        out[split] = result["correct"] / result["count"]
    return out


def run_seed(seed: int, args, work: Path, log) -> dict[str, dict]:
    data = work / f"data-{seed}"
    class_names = make_data(data, seed, {"train": args.train_per_class,
                                         "valid": args.valid_per_class,
                                         **{split: args.test_per_class for split in TESTS}})
    common = ["--arch", args.arch, "--image-size", str(args.image_size), "--seed", str(seed)]
    dirs = ["--train-dir", str(data / "train"), "--valid-dir", str(data / "valid")]
    feats, probe_dir = work / f"features-{seed}", work / f"probe-{seed}"
    quiet(log, features_step.main, [*common, *dirs, "--output-dir", str(feats), "--views", "4",
                                    "--pretrained", "true", "--workers", "0"])
    probe_settings = ["--lr", str(args.probe_lr), "--batch-size", str(args.probe_batch),
                      "--weight-decay", str(args.probe_weight_decay),
                      "--label-smoothing", str(args.probe_label_smoothing)]
    quiet(log, train.main, [*common, "--mode", "linear-probe", "--pretrained", "true",
                            "--features-dir", str(feats), "--epochs", str(args.probe_epochs),
                            *probe_settings, "--model-dir", str(probe_dir),
                            "--output-data-dir", str(work / f"probe-out-{seed}")])
    # probe only: the backbone train.py and features.py build for this seed, the probed head
    torch.manual_seed(seed)
    model = build_model(args.arch, len(class_names), pretrained=True,
                        image_size=args.image_size)
    model.head.load_state_dict(load_state(probe_dir / "head.pt"))
    config = {"image_size": args.image_size,
              "resize_size": preprocessing(args.arch, True, args.image_size)}
    probe_meta = json.loads((probe_dir / "head.json").read_text())
    results = {"probe": {**score(model.eval(), config, data, class_names),
                         "valid": probe_meta["valid_accuracy"],
                         "settings": f"head {args.probe_lr:g}, batch {args.probe_batch}"}}

    ft_settings = {
        "ft": ["--pretrained", "true", "--lr", "1e-3"],
        "lpft-probe": ["--pretrained", "true", "--head-dir", str(probe_dir), *probe_settings],
        "lpft-own": ["--pretrained", "true", "--head-dir", str(probe_dir),
                     "--lr", str(args.probe_lr), "--backbone-lr", "1e-4", "--batch-size", "32",
                     "--weight-decay", "0.05", "--label-smoothing", "0.1"],
        "scratch": ["--pretrained", "false", "--lr", "1e-3"],
    }
    for arm, settings in ft_settings.items():
        model_dir = work / f"{arm}-{seed}"
        quiet(log, train.main, [*common, *dirs, *settings, "--epochs", str(args.epochs),
                                "--workers", "0", "--checkpoint-dir", "",
                                "--model-dir", str(model_dir),
                                "--output-data-dir", str(work / f"{arm}-out-{seed}")])
        model, config = load_model(model_dir, tta_hflip=False)
        summary = config["training"]
        if arm.startswith("lpft") and not summary["probed_head"]:
            raise RuntimeError(f"{arm} did not start from the probed head")
        results[arm] = {**score(model, config, data, class_names),
                        "valid": summary["valid_accuracy"],
                        "settings": f"{summary['head_lr']:g} / {summary['backbone_lr']:g}, "
                                    f"batch {summary['hyperparameters']['batch_size']}"}
    return results


def spread(values) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} +- {sd:.3f}"


def report(per_seed: list[dict], seconds: float) -> None:
    names = {"test": "in distribution", "stripes": "OOD stripes", "tinted": "OOD tinted"}
    print(f"\naccuracy over {len(per_seed)} seeds, mean +- sd (valid: the split that picks the "
          f"epoch)")
    print(f"{'arm':<11} {'lr head / backbone':<26} {'valid':>15}" +
          "".join(f"  {names[split]:>15}" for split in TESTS))
    for arm in ARMS:
        rows = [r[arm] for r in per_seed]
        print(f"{arm:<11} {rows[0]['settings']:<26} {spread([r['valid'] for r in rows]):>15}" +
              "".join(f"  {spread([r[split] for r in rows]):>15}" for split in TESTS))
    print("\npaired differences (same seed, same data): mean [min..max] and the seeds where "
          "the first arm scores higher")
    print(f"{'difference':<23}" + "".join(f"  {names[split]:>26}" for split in TESTS))
    for a, b in PAIRS:
        cells = []
        for split in TESTS:
            d = [r[a][split] - r[b][split] for r in per_seed]
            cells.append(f"{statistics.mean(d):+.3f} [{min(d):+.3f}..{max(d):+.3f}] "
                         f"{sum(x > 0 for x in d)}/{len(d)}")
        print(f"{a + ' - ' + b:<23}" + "".join(f"  {cell:>26}" for cell in cells))
    print(f"\nwall time {seconds:.0f}s")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=5, help="seeds 1..N (new data for each)")
    p.add_argument("--epochs", type=int, default=30, help="epochs of every fine-tune arm")
    p.add_argument("--probe-epochs", type=int, default=30,
                   help="passes of the probe over the 4 cached views of each image")
    p.add_argument("--probe-lr", type=float, default=3e-3)
    p.add_argument("--probe-batch", type=int, default=16)
    p.add_argument("--probe-weight-decay", type=float, default=0.05)
    p.add_argument("--probe-label-smoothing", type=float, default=0.1)
    p.add_argument("--train-per-class", type=int, default=10)
    p.add_argument("--valid-per-class", type=int, default=10)
    p.add_argument("--test-per-class", type=int, default=30, help="per test split")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    started = time.perf_counter()
    os.environ["TORCH_HOME"] = str(pretrained.torch_home(args.arch))  # pretrains once if absent
    print(f"pretrained {args.arch} ready in {time.perf_counter() - started:.0f}s; "
          f"{args.seeds} seed(s), {args.epochs} epochs, {args.train_per_class} training images "
          f"per class, {len(SHAPES) * SHADES} classes", flush=True)
    per_seed = []
    with tempfile.TemporaryDirectory(prefix="transfer-") as tmp:
        work = Path(tmp)
        with open(work / "run.log", "w") as log:
            for seed in range(1, args.seeds + 1):
                seed_start = time.perf_counter()
                try:
                    per_seed.append(run_seed(seed, args, work, log))
                except BaseException:
                    log.flush()
                    print("".join(open(work / "run.log").readlines()[-30:]), file=sys.stderr)
                    raise
                print(f"seed {seed} ({time.perf_counter() - seed_start:.0f}s), "
                      f"{' / '.join(TESTS)}: " + ", ".join(
                          f"{arm} " + "/".join(f"{r[split]:.2f}" for split in TESTS)
                          for arm, r in per_seed[-1].items()), flush=True)
    report(per_seed, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
