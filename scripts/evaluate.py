"""Evaluate a trained model on the test split, and on the valid split (SageMaker Processing
contract).

Inputs:  --model-dir  a model directory or model.tar.gz  (default /opt/ml/processing/model;
                      a folder holding only model.tar.gz, as a ProcessingInput delivers it, works)
         --test-dir   <class>/<image> folder               (default /opt/ml/processing/test)
         --valid-dir  <class>/<image> folder, optional     (the pipeline passes its valid split)
         --approved-model  the approved version's model (a folder holding its model.tar.gz, or
                      nothing: the pipeline passes a placeholder when no version is approved),
                      with --approved-version its name: both models score the test split and
                      evaluation.json and report.html compare them on the same images
Outputs: --output-dir (default /opt/ml/processing/evaluation)
         evaluation.json      test split: Model Registry multiclass metrics (breedkit.evaluation)
         validation.json      valid split, same format (the pipeline's accuracy gate reads it)
         confusion_matrix.png test split
         predictions.csv      test split: file, true class, predicted class, probability
         report.html          test split, for the approver: accuracy with its interval,
                              per-class accuracy, confused pairs, calibration, the worst
                              mistakes with Grad-CAM heatmaps (breedkit.report)
         baseline.json        valid split (the test split without --valid-dir): the predicted
                              classes, top-1 confidences and input image statistics that
                              monitor.py compares live traffic with (breedkit.drift)
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from breedkit.contract import (UserError, cpu_count, parse_args, run_main,  # noqa: E402
                               setup_logging)
from breedkit.monitorspec import BASELINE_FILE  # noqa: E402

log = logging.getLogger("evaluate")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model-dir", default="/opt/ml/processing/model")
    p.add_argument("--test-dir", default="/opt/ml/processing/test")
    p.add_argument("--valid-dir", default="",
                   help="also score this split into validation.json")
    p.add_argument("--output-dir", default="/opt/ml/processing/evaluation")
    p.add_argument("--approved-model", default="",
                   help="the approved version's model directory, model.tar.gz or a folder "
                        "holding it; a folder without a model means no approved version")
    p.add_argument("--approved-version", default="", help="its name, for the reports")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=-1, help="-1: automatic")
    p.add_argument("--bootstrap-rounds", type=int, default=200,
                   help="resamples for the metrics' standard deviations (0: none, written as "
                        "null)")
    p.add_argument("--tta", default="auto", choices=("auto", "hflip", "none"),
                   help="test-time augmentation: hflip averages each image's prediction with its "
                        "mirror image's; auto = hflip for models trained with random flips, as "
                        "serving does (breedkit.model.flip_tta_by_default)")
    return p


def locate_model(path: str, scratch: str) -> str:
    """A model directory from a directory, a model.tar.gz, or a folder holding one."""
    from breedkit.model import CONFIG_FILE, extract_archive

    if os.path.isfile(path):
        return str(extract_archive(path, scratch))
    if not os.path.isdir(path):
        raise UserError(f"--model-dir {path} does not exist: pass a model directory or a "
                        f"model.tar.gz")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)):
        return path
    archive = os.path.join(path, "model.tar.gz")
    if os.path.isfile(archive):
        return str(extract_archive(archive, scratch))
    raise UserError(f"{path} holds neither {CONFIG_FILE} nor model.tar.gz: it is not the "
                    f"output of train.py")


def write_report(path: str, model, dataset, probs, report: dict, config: dict, device,
                 comparison: dict | None = None, why_not: str = "") -> None:
    """report.html: what the approver looks at (breedkit.report)."""
    import numpy as np

    from breedkit import report as page
    from breedkit.model import FlipTTA, display_label

    network = model.model if isinstance(model, FlipTTA) else model
    labels = np.array([label for _, label in dataset.samples], dtype=np.int64)
    names = [display_label(c) for c in config["class_names"]]
    mistakes = page.worst_mistakes(network, dataset, probs, labels, names, device)
    top5 = report["multiclass_classification_metrics"].get("top_5_accuracy", {}).get("value")
    page.write(path, title=f"{config['arch']}, {len(names)} classes: evaluation on the test split",
               probs=probs, labels=labels, names=names, mistakes=mistakes, top5=top5,
               comparison=comparison, why_not=why_not)


def approved_model_dir(path: str, scratch: str) -> str | None:
    """The approved version's model directory, or None when ``path`` holds no model (the
    pipeline's placeholder when no version is approved)."""
    from breedkit.model import CONFIG_FILE

    if not path:
        return None
    if os.path.isfile(path) or os.path.isfile(os.path.join(path, CONFIG_FILE)) or \
            os.path.isfile(os.path.join(path, "model.tar.gz")):
        return locate_model(path, scratch)
    return None


def compare_with_approved(args, scratch: str, dataset, probs, config: dict, device
                          ) -> tuple[dict | None, str]:
    """(the paired comparison, or None and why not): the approved model scores the same test
    images with its own transforms and TTA."""
    import numpy as np
    import torch

    from breedkit.data import ImageFolderDataset, make_loader
    from breedkit.evaluation import paired_comparison
    from breedkit.model import load_model
    from breedkit.transforms import eval_transform_for

    try:
        model_dir = approved_model_dir(args.approved_model, scratch)
        if model_dir is None:
            return None, "no approved version"
        approved, approved_config = load_model(model_dir, device, tta_hflip=None)
    except UserError as exc:  # the new model is still evaluated; the approver reads why
        reason = " ".join(str(exc).split())
        log.warning("no comparison: the approved version's model cannot be read: %s", reason)
        return None, f"version {args.approved_version or '?'}'s model cannot be read: {reason}"
    if list(approved_config["class_names"]) != list(config["class_names"]):
        log.warning("the approved version has other classes: no comparison")
        return None, "the approved version has other classes"
    same = ImageFolderDataset(args.test_dir, config["class_names"],
                              transform=eval_transform_for(approved_config))
    predicted = []
    with torch.inference_mode():
        for images, _ in make_loader(same, args.batch_size, shuffle=False, workers=0):
            predicted.append(approved(images.to(device)).argmax(dim=1).cpu())
    labels = np.array([label for _, label in dataset.samples])
    comparison = paired_comparison(labels, probs.argmax(axis=1), torch.cat(predicted).numpy())
    return {"approved_version": args.approved_version, **comparison}, ""


def drift_baseline(dataset, probs, split: str, config: dict) -> dict:
    """What monitor.py compares a version's live traffic with: the model's predictions on
    ``split`` and those images' statistics (a sample of at most breedkit.drift.MAX_SAMPLE)."""
    from breedkit.capture import image_stats
    from breedkit.drift import MAX_SAMPLE, make_baseline
    from breedkit.transforms import eval_size

    stats = []
    step = max(1, len(dataset.samples) // MAX_SAMPLE)
    for path, _ in dataset.samples[::step]:
        with open(path, "rb") as fh:
            found = image_stats(fh.read())
        if found is not None:
            stats.append(found)
    return make_baseline(config["class_names"], probs, stats, eval_size(config)[0], split)


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    if args.bootstrap_rounds < 0:
        raise UserError(f"--bootstrap-rounds must be >= 0, got {args.bootstrap_rounds}")

    import torch

    from breedkit.data import ImageFolderDataset, make_loader
    from breedkit.evaluation import compute_metrics, plot_confusion_matrix
    from breedkit.model import FlipTTA, display_label, load_model
    from breedkit.transforms import eval_transform_for

    with tempfile.TemporaryDirectory(prefix="model-") as scratch:
        model_dir = locate_model(args.model_dir, scratch)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model, config = load_model(model_dir, device,
                                   tta_hflip={"auto": None, "hflip": True}.get(args.tta, False))
    tta = isinstance(model, FlipTTA)
    class_names = config["class_names"]
    workers = max(0, min(8, cpu_count() - 1)) if args.workers < 0 else args.workers

    def score(folder: str, split: str):
        dataset = ImageFolderDataset(folder, class_names,
                                     transform=eval_transform_for(config))
        loader = make_loader(dataset, args.batch_size, shuffle=False, workers=workers)
        log.info("evaluating %s (%s, %d classes) on %d %s images%s", args.model_dir,
                 config["arch"], len(class_names), len(dataset), split,
                 " with horizontal-flip TTA" if tta else "")
        probs, labels = [], []
        with torch.inference_mode():
            for images, targets in loader:
                logits = model(images.to(device))
                probs.append(torch.softmax(logits.float(), dim=1).cpu())
                labels.append(targets)
        probs_np = torch.cat(probs).numpy()
        report = compute_metrics(torch.cat(labels).numpy(), probs_np, class_names,
                                 rounds=args.bootstrap_rounds)
        return {**report, "split": split, "tta": "hflip" if tta else "none"}, dataset, probs_np

    validation = None
    if args.valid_dir:
        if not os.path.isdir(args.valid_dir):
            raise UserError(f"--valid-dir {args.valid_dir} is not a folder: pass the valid "
                            f"split's <class>/<image> folder, or leave --valid-dir out")
        validation, valid_set, valid_probs = score(args.valid_dir, "valid")
    report, dataset, probs_np = score(args.test_dir, "test")

    with tempfile.TemporaryDirectory(prefix="approved-") as scratch:
        comparison, why_not = compare_with_approved(args, scratch, dataset, probs_np, config,
                                                    device)
    from breedkit.evaluation import comparison_summary

    report["comparison"] = comparison
    report["comparison_summary"] = comparison_summary(comparison, why_not)
    report["passes_require_improvement"] = comparison is None or comparison["better"]
    if comparison is not None:
        print(f"against approved version {args.approved_version or '?'}: "
              f"{report['comparison_summary']}", flush=True)

    os.makedirs(args.output_dir, exist_ok=True)
    baseline = drift_baseline(*((valid_set, valid_probs, "valid") if validation is not None
                                else (dataset, probs_np, "test")), config)
    with open(os.path.join(args.output_dir, BASELINE_FILE), "w") as fh:
        json.dump(baseline, fh)
    with open(os.path.join(args.output_dir, "evaluation.json"), "w") as fh:
        json.dump(report, fh, indent=2)
    if validation is not None:
        with open(os.path.join(args.output_dir, "validation.json"), "w") as fh:
            json.dump(validation, fh, indent=2)
        valid_accuracy = validation["multiclass_classification_metrics"]["accuracy"]["value"]
        print(f"valid_accuracy={valid_accuracy:.4f}", flush=True)
    plot_confusion_matrix(report, os.path.join(args.output_dir, "confusion_matrix.png"),
                          [display_label(c) for c in class_names])
    with open(os.path.join(args.output_dir, "predictions.csv"), "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "true_class", "predicted_class", "probability"])
        for (path, label), row in zip(dataset.samples, probs_np):
            pred = int(row.argmax())
            writer.writerow([os.path.relpath(path, args.test_dir), class_names[label],
                             class_names[pred], f"{row[pred]:.6f}"])
    write_report(os.path.join(args.output_dir, "report.html"), model, dataset, probs_np, report,
                 config, device, comparison, why_not)
    metrics = report["multiclass_classification_metrics"]
    print(f"test_accuracy={metrics['accuracy']['value']:.4f} "
          f"test_top5_accuracy={metrics['top_5_accuracy']['value']:.4f} "
          f"test_weighted_f1={metrics['weighted_f1']['value']:.4f}", flush=True)
    log.info("evaluation written to %s", args.output_dir)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
