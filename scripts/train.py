"""Fine-tune a torchvision backbone (ResNet, ConvNeXt, EfficientNetV2, ViT) on an image folder
(SageMaker training contract), or train only its new head on cached features (``--mode linear-probe``: a tuning trial, breedkit.probe).

Data:        SM_CHANNEL_TRAIN, SM_CHANNEL_VALID  (<class>/<image> folders, e.g. from preprocess.py)
             SM_CHANNEL_FEATURES  (--mode linear-probe: the Features step's output)
             SM_CHANNEL_HEAD  (optional: a probed head, from a linear-probe trial, to start from)
Model:       SM_MODEL_DIR  (weights, classes, config and code/inference.py: see breedkit.model)
Extras:      SM_OUTPUT_DATA_DIR  (history.json, training_summary.json)
Checkpoints: --checkpoint-dir (default: the folder SageMaker syncs to S3, for jobs that have a
             CheckpointConfig; none otherwise, e.g. tuning trials); a restarted job (spot
             interruption) resumes from the last completed epoch.

One line per epoch, read by the tuning job's metric regexes (breedkit.logformat)::

    epoch=3 train_loss=0.9100 train_accuracy=0.7012 valid_loss=1.0200 valid_accuracy=0.7712 ...

The test split is never read here. Runs under torchrun for multi-process/multi-instance jobs.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from breedkit import distributed  # noqa: E402
from breedkit.contract import (UserError, cpu_count, env_path, parse_args, run_main,  # noqa: E402
                               sagemaker_checkpoint_dir, setup_logging, str2bool)
from breedkit.logformat import format_epoch_line  # noqa: E402
from breedkit.archs import ARCHS, FINE_TUNE_CHOICES, size_problem  # noqa: E402
from breedkit.training import AMP_CHOICES  # noqa: E402

log = logging.getLogger("train")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    hp = p.add_argument_group("hyperparameters")
    hp.add_argument("--mode", default="fine-tune", choices=("fine-tune", "linear-probe"),
                    help="fine-tune: train the network on images; linear-probe: train only the "
                         "head on the cached features of --features-dir (a tuning trial)")
    hp.add_argument("--lr", type=float, default=1e-3,
                    help="peak learning rate of the new head, for one process (scaled with the "
                         "number of processes: breedkit.training.scale_lr)")
    hp.add_argument("--backbone-lr-mult", type=float, default=None,
                    help="the pretrained layers learn at --lr times this (default: 0.1 with "
                         "--pretrained true, 1 from scratch)")
    hp.add_argument("--backbone-lr", type=float, default=0.0,
                    help="the pretrained layers' peak rate for one process, instead of --lr x "
                         "--backbone-lr-mult (TrainFinal's FineTuneLearningRate after a linear "
                         "probe); a probed head learns at it too. Ignored with --pretrained "
                         "false: no layer is pretrained (0: not given)")
    hp.add_argument("--batch-size", type=int, default=32, help="images per step and process")
    hp.add_argument("--epochs", type=int, default=10)
    hp.add_argument("--weight-decay", type=float, default=0.05,
                    help="decoupled weight decay of the linear maps' weights (not of biases, "
                         "norms, layer scales, embeddings)")
    hp.add_argument("--arch", default="resnet50", choices=ARCHS,
                    help="the backbone (docs/recipe.md#backbones); a ViT trains, evaluates and "
                         "serves at one --image-size, a multiple of 16")
    hp.add_argument("--pretrained", type=str2bool, default=True,
                    help="start from torchvision's ImageNet weights (true/false)")
    hp.add_argument("--image-size", type=int, default=224, help="training crop size")
    hp.add_argument("--eval-image-size", type=int, default=0,
                    help="validation, evaluation and serving crop (0: --image-size); resized in "
                         "the pretrained weights' own proportion (232 -> 224 for ResNet50)")
    hp.add_argument("--preprocess-image-size", type=int, default=-1,
                    help="the shorter side preprocess.py stored the images at (0: derived from "
                         "the crops, as preprocess.py derives it; -1: not preprocessed). Serving "
                         "repeats that resize and JPEG encoding before the evaluation transform, "
                         "so it scores uploads as evaluation scored the stored test images")
    hp.add_argument("--seed", type=int, default=42)
    hp.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    hp.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    hp.add_argument("--label-smoothing", type=float, default=0.1)
    hp.add_argument("--fine-tune", default="all", choices=FINE_TUNE_CHOICES,
                    help="layers to train: all; layer3: the last two stages and the head (a "
                         "ResNet's layer3, layer4, fc); layer4: the last stage and the head; "
                         "head: the head alone")
    hp.add_argument("--warmup-epochs", type=float, default=None,
                    help="linear learning-rate warm-up before the cosine decay (default: a "
                         "tenth of --epochs, at most 1, with --pretrained true; 0 from scratch)")
    hp.add_argument("--min-scale", type=float, default=0.25,
                    help="smallest area fraction of the random-resized crop")
    hp.add_argument("--hflip", type=str2bool, default=True,
                    help="random horizontal flips (turn off for digits, text, signs)")
    hp.add_argument("--ema-decay", type=float, default=0.998,
                    help="per-step decay of the weights' exponential moving average, evaluated "
                         "beside the raw weights each epoch: the better of the two is kept "
                         "(0: no average; 0.998 averages over the last ~500 steps)")
    hp.add_argument("--patience", type=int, default=0,
                    help="stop after this many epochs without a better validation accuracy "
                         "(0: never)")
    rt = p.add_argument_group("runtime")
    rt.add_argument("--workers", type=int, default=-1,
                    help="data-loading processes per training process (-1: automatic)")
    rt.add_argument("--amp", default="auto", choices=AMP_CHOICES,
                    help="mixed precision: auto = bf16 on capable GPUs/CPUs, fp16 on older GPUs")
    rt.add_argument("--device", default="auto", help="auto, cpu or cuda")
    rt.add_argument("--debugger-out", default="",
                    help="write the training hook's smdebug output (reductions) here, for the "
                         "training rules (TrainFinal)")
    rt.add_argument("--debugger-save-interval", type=int, default=20)
    rt.add_argument("--profile-out", default="",
                    help="write system use and per-step timings here (breedkit.profiling)")
    rt.add_argument("--tensorboard-dir", default="",
                    help="write TensorBoard events here (SageMaker: the TensorBoardOutputConfig "
                         "path)")
    rt.add_argument("--max-steps-per-epoch", type=int, default=0,
                    help="cap on steps per epoch (0: the whole training set); for smoke tests")
    loc = p.add_argument_group("locations (SageMaker sets these)")
    loc.add_argument("--train-dir", default=env_path("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    loc.add_argument("--valid-dir", default=env_path("SM_CHANNEL_VALID", "/opt/ml/input/data/valid"))
    loc.add_argument("--features-dir",
                     default=env_path("SM_CHANNEL_FEATURES", "/opt/ml/input/data/features"),
                     help="cached features (--mode linear-probe)")
    loc.add_argument("--head-dir", default=env_path("SM_CHANNEL_HEAD", ""),
                     help="start from the probed head in this folder (or its model.tar.gz); a "
                          "folder holding no probed head is ignored")
    loc.add_argument("--model-dir", default=env_path("SM_MODEL_DIR", "/opt/ml/model"))
    loc.add_argument("--output-data-dir",
                     default=env_path("SM_OUTPUT_DATA_DIR", "/opt/ml/output/data"))
    loc.add_argument("--checkpoint-dir", default=sagemaker_checkpoint_dir(),
                     help="'' disables checkpoints")
    return p


def validate(args) -> None:
    checks = [
        (args.lr > 0, f"--lr must be > 0, got {args.lr}"),
        (args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}"),
        (args.epochs >= 1, f"--epochs must be >= 1, got {args.epochs}"),
        (args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}"),
        (args.image_size >= 16, f"--image-size must be >= 16, got {args.image_size}"),
        (0 <= args.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
        (0 < args.min_scale <= 1, "--min-scale must be in (0, 1]"),
        (args.patience >= 0, "--patience must be >= 0"),
        (args.backbone_lr_mult is None or args.backbone_lr_mult >= 0,
         "--backbone-lr-mult must be >= 0"),
        (args.backbone_lr >= 0, f"--backbone-lr must be >= 0, got {args.backbone_lr}"),
        (0 <= args.ema_decay < 1, f"--ema-decay must be in [0, 1), got {args.ema_decay}"),
        (args.warmup_epochs is None or args.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
        (args.eval_image_size == 0 or args.eval_image_size >= 16,
         "--eval-image-size must be 0 or >= 16"),
        (not size_problem(args.arch, args.image_size, args.eval_image_size),
         size_problem(args.arch, args.image_size, args.eval_image_size)),
    ]
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def resolve_defaults(args):
    """Fill in the defaults that depend on --pretrained (docs/recipe.md explains)."""
    if args.backbone_lr_mult is None:
        args.backbone_lr_mult = 0.1 if args.pretrained else 1.0
    if args.warmup_epochs is None:
        args.warmup_epochs = min(1.0, args.epochs / 10) if args.pretrained else 0.0
    if not args.eval_image_size:
        args.eval_image_size = args.image_size
    if args.preprocess_image_size == 0:
        from breedkit.transforms import stored_size

        args.preprocess_image_size = stored_size(0, args.image_size, args.eval_image_size)
    return args


def start_from_probed_head(args, model, class_names) -> dict | None:
    """LP-FT: the best linear-probe trial's head in ``model.head`` (its head.json), or None."""
    args.probed_head = ""
    if not args.head_dir:
        return None
    from breedkit import features
    from breedkit.probe import load_head

    expected = features.signature(args.arch, args.pretrained, args.image_size, args.seed,
                                  features.backbone_checksum(model))
    probed = load_head(args.head_dir, model, class_names, expected)
    if probed is None:
        log.info("%s holds no probed head: starting from a new head", args.head_dir)
        return None
    args.probed_head = f"{probed['signature']['backbone_checksum']}:{probed['valid_accuracy']}"
    log.info("starting from the probed head in %s (valid accuracy %.4f on cached features)",
             args.head_dir, probed["valid_accuracy"])
    return probed


def learning_rates(args, world_size: int, probed: bool) -> tuple[float, float]:
    """(the head's peak rate, the backbone's rate as a multiple of it) for ``world_size``
    processes. The backbone learns at --backbone-lr when given (and pretrained), else at --lr x
    --backbone-lr-mult; a probed head (LP-FT) is trained already and joins the backbone's rate."""
    from breedkit.training import scale_lr

    head = scale_lr(args.lr, world_size, args.optimizer)
    backbone = (scale_lr(args.backbone_lr, world_size, args.optimizer)
                if args.backbone_lr and args.pretrained else head * args.backbone_lr_mult)
    if probed:
        return backbone, 1.0
    return head, backbone / head


def default_workers(env) -> int:
    """Leave most cores to the math on small machines; use more where there are many."""
    per_process = cpu_count() // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    if env.device.type == "cuda":
        return max(2, min(8, per_process - 1))
    # measured on 2 cores: decoding in the training process beats a worker competing for a core
    return 0 if per_process <= 2 else 1 if per_process <= 4 else min(4, per_process // 4)


def signature(args, class_names, env) -> dict:
    """What a checkpoint must match to be resumed."""
    keys = ("lr", "backbone_lr_mult", "backbone_lr", "batch_size", "epochs", "weight_decay", "arch",
            "pretrained", "image_size", "eval_image_size", "seed", "optimizer", "momentum",
            "label_smoothing", "fine_tune", "warmup_epochs", "min_scale", "hflip",
            "max_steps_per_epoch", "probed_head", "ema_decay")
    sig = {k: getattr(args, k) for k in keys}
    sig.update(class_names=list(class_names), world_size=env.world_size)
    return sig


def train_head(args) -> int:
    """--mode linear-probe: the head alone, on cached features (no images, no torchvision)."""
    from breedkit.probe import train_probe
    from breedkit.tracking import Tracker

    tracker = Tracker(args.tensorboard_dir)
    failed = True
    try:
        tracker.params({k: getattr(args, k) for k in ("mode", "lr", "batch_size", "epochs",
                                                      "weight_decay", "label_smoothing", "arch",
                                                      "pretrained", "image_size", "seed")})
        summary = train_probe(args, tracker)
        tracker.finish(summary, args.model_dir, args.output_data_dir)
        failed = False
    finally:
        tracker.close(failed)
    return 0


@dataclass
class Data:
    train_loader: object
    valid_loader: object
    class_names: list
    resize: int
    interpolation: str


@dataclass
class Optimization:
    optimizer: object
    scheduler: object
    scaler: object
    head_lr: float
    backbone_mult: float
    average: object = None  # breedkit.training.WeightAverage, with --ema-decay


@dataclass
class Progress:
    """Where the epochs are: the history, the best epoch's weights, early stopping's count."""
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"accuracy": -1.0, "epoch": 0, "weights": None,
                                                "kept": "raw"})
    start_epoch: int = 1
    stale: int = 0


def load_data(args, env) -> Data:
    """The train split (random-resized crops, flips) and the valid split (the evaluation
    transform, in the weights' own proportion), as loaders of this process's share."""
    from breedkit.data import ImageFolderDataset, make_loader
    from breedkit.model import interpolation, preprocessing
    from breedkit.transforms import eval_transform_for, train_transform

    resampling = interpolation(args.arch, args.pretrained)
    train_set = ImageFolderDataset(args.train_dir, transform=train_transform(
        args.image_size, args.min_scale, args.hflip, resampling))
    class_names = train_set.class_names
    if len(class_names) < 2:
        raise UserError(f"{args.train_dir} has {len(class_names)} class folder(s); "
                        f"a classifier needs at least 2")
    resize = preprocessing(args.arch, args.pretrained, args.image_size)
    valid_set = ImageFolderDataset(args.valid_dir, class_names, transform=eval_transform_for(
        {"image_size": args.image_size, "resize_size": resize,
         "eval_image_size": args.eval_image_size, "interpolation": resampling}))
    workers = default_workers(env) if args.workers < 0 else args.workers
    pin = env.device.type == "cuda"
    train_loader = make_loader(train_set, args.batch_size, shuffle=True, workers=workers,
                               seed=args.seed, rank=env.rank, world_size=env.world_size,
                               drop_last=len(train_set) >= 2 * args.batch_size * env.world_size,
                               pin_memory=pin)
    valid_loader = make_loader(valid_set, args.batch_size * 2, shuffle=False, workers=workers,
                               rank=env.rank, world_size=env.world_size, pin_memory=pin)
    if env.is_main:
        log.info("data: %d training and %d validation images, %d classes; %d process(es), "
                 "%d loader worker(s) each, device %s", len(train_set), len(valid_set),
                 len(class_names), env.world_size, workers, env.device)
    return Data(train_loader, valid_loader, class_names, resize, resampling)


def build_network(args, env, class_names):
    """(the model, the probed head it starts from or None): built as the Features step built
    its backbone."""
    import torch

    from breedkit.model import build_model
    from breedkit.training import configure_backends

    torch.manual_seed(args.seed)  # the backbone the Features step built (breedkit.probe)
    model = build_model(args.arch, len(class_names), args.pretrained, args.fine_tune,
                        args.image_size)
    probed = start_from_probed_head(args, model, class_names)
    configure_backends(env.device)
    return model, probed


def resume_weights(model, ckpt, sig: dict, env):
    """The checkpoint of these settings, if any (a restarted job), its weights loaded; the
    model on the device, channels_last. The resume point comes from rank 0, and is loaded
    before DDP copies rank 0's weights."""
    import torch

    resumed = ckpt.load(sig)
    if resumed is not None:
        model.backbone.load_state_dict(resumed[0]["model"])
    model.to(env.device, memory_format=torch.channels_last)
    return resumed


def make_optimization(args, env, model, probed, steps: int, amp_dtype) -> Optimization:
    """AdamW (or SGD) over the parameter groups, warm-up then cosine per step, a gradient
    scaler for fp16, and the weights' moving average (--ema-decay)."""
    import torch

    from breedkit.model import parameter_groups
    from breedkit.training import WeightAverage, cosine_schedule, make_optimizer

    head_lr, backbone_mult = learning_rates(args, env.world_size, bool(probed))
    optimizer = make_optimizer(parameter_groups(model, head_lr, args.weight_decay, backbone_mult),
                               args.optimizer, head_lr, args.momentum)
    scheduler = cosine_schedule(optimizer, steps * args.epochs, int(steps * args.warmup_epochs))
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    average = WeightAverage(model.backbone, args.ema_decay) if args.ema_decay else None
    return Optimization(optimizer, scheduler, scaler, head_lr, backbone_mult, average)


def resume_progress(resumed, opt: Optimization, ckpt, env) -> Progress:
    """The epochs already done, from a checkpoint (a restarted spot job), or a fresh start."""
    progress = Progress()
    if resumed is None:
        return progress
    state, best_weights = resumed
    opt.optimizer.load_state_dict(state["optimizer"])
    opt.scheduler.load_state_dict(state["scheduler"])
    if opt.scaler is not None and state.get("scaler"):
        opt.scaler.load_state_dict(state["scaler"])
    progress.history = list(state["history"])
    progress.start_epoch, progress.stale = state["epoch"] + 1, state["stale_epochs"]
    progress.best.update(accuracy=state["best_accuracy"], epoch=state["best_epoch"],
                         weights=best_weights, kept=state.get("best_kept", "raw"))
    if opt.average is not None and state.get("ema"):
        opt.average.load_state_dict(state["ema"])
    if env.is_main:
        log.info("resumed from checkpoint %s after epoch %d (best valid_accuracy %.4f at epoch "
                 "%d)", ckpt.dir, state["epoch"], progress.best["accuracy"],
                 progress.best["epoch"])
    return progress


def log_setup(args, env, opt: Optimization, amp_dtype) -> None:
    if env.is_main:
        log.info("precision: %s; channels_last; %s %s, pretrained=%s, fine-tune %s; lr %.3g "
                 "for the head (--lr %.3g for %d process(es)), %.3g for the backbone; "
                 "warm-up %.2f epoch(s); weight decay %.3g", precision_name(amp_dtype),
                 args.arch, args.optimizer, args.pretrained, args.fine_tune, opt.head_lr,
                 args.lr, env.world_size, opt.head_lr * opt.backbone_mult, args.warmup_epochs,
                 args.weight_decay)


def precision_name(amp_dtype) -> str:
    return "fp32" if amp_dtype is None else str(amp_dtype).replace("torch.", "")


def run_epochs(args, env, run: dict, data: Data, opt: Optimization, progress: Progress,
               ckpt, sig: dict) -> None:
    """Train and validate epoch by epoch: the best weights by validation accuracy kept, a
    checkpoint and the tuning metrics' line after each epoch, early stopping by --patience."""
    from breedkit.training import evaluate, train_one_epoch

    model, net, criterion, hook = run["model"], run["net"], run["criterion"], run["hook"]
    profiler, tracker, amp_dtype = run["profiler"], run["tracker"], run["amp_dtype"]
    best = progress.best
    for epoch in range(progress.start_epoch, args.epochs + 1):
        data.train_loader.sampler.set_epoch(epoch)
        lr = opt.optimizer.param_groups[0]["lr"]
        tr = train_one_epoch(net, data.train_loader, opt.optimizer, criterion, env.device,
                             amp_dtype=amp_dtype, scaler=opt.scaler, scheduler=opt.scheduler,
                             hook=hook, epoch=epoch, max_steps=args.max_steps_per_epoch or None,
                             profiler=profiler if profiler.enabled else None, tracker=tracker,
                             after_step=opt.average.update if opt.average else None)
        va = evaluate(net, data.valid_loader, criterion, env.device, amp_dtype=amp_dtype,
                      hook=hook)
        (t_loss, t_correct, t_count, v_loss, v_correct, v_count) = distributed.all_reduce_sum(
            [tr["loss_sum"], tr["correct"], tr["count"], va["loss_sum"], va["correct"],
             va["count"]], env)
        valid_accuracy = v_correct / max(1, v_count)
        ema_accuracy = average_accuracy(net, data, criterion, env, opt, amp_dtype)
        improved = keep_best(progress, model, opt, epoch, valid_accuracy, ema_accuracy)
        metrics = {
            "train_loss": t_loss / max(1, t_count), "train_accuracy": t_correct / max(1, t_count),
            "valid_loss": v_loss / max(1, v_count), "valid_accuracy": valid_accuracy,
            **({"valid_ema_accuracy": ema_accuracy} if ema_accuracy is not None else {}),
            "valid_best_accuracy": best["accuracy"], "lr": lr,
            "epoch_seconds": tr["seconds"], "images_per_second": t_count / tr["seconds"],
        }
        progress.history.append({"epoch": epoch, **metrics})
        if env.is_main:  # checkpoint first: a job killed after the line can resume it
            ckpt.save({
                "signature": sig, "epoch": epoch, "model": model.backbone.state_dict(),
                "optimizer": opt.optimizer.state_dict(), "scheduler": opt.scheduler.state_dict(),
                "scaler": opt.scaler.state_dict() if opt.scaler is not None else {},
                "history": progress.history, "best_accuracy": best["accuracy"],
                "best_epoch": best["epoch"], "best_kept": best["kept"],
                "stale_epochs": progress.stale,
                "ema": opt.average.state_dict() if opt.average is not None else None,
            }, best["weights"] if improved else None)
            print(format_epoch_line(epoch, metrics), flush=True)
            tracker.epoch(epoch, metrics, {"data_seconds": tr["data_seconds"],
                                           "compute_seconds": tr["seconds"] - tr["data_seconds"]})
        stop = bool(args.patience) and progress.stale >= args.patience
        if distributed.broadcast_flag(stop, env):
            if env.is_main:
                log.info("early stopping: no better validation accuracy for %d epochs",
                         progress.stale)
            break


def keep_best(progress: Progress, model, opt: Optimization, epoch: int, raw: float,
              ema: float | None) -> bool:
    """Keep this epoch's weights (the raw ones or their average, the better; a tie: the raw)
    if they beat the best so far; whether they did."""
    accuracy, kept = max([(raw, "raw")] + ([(ema, "ema")] if ema is not None else []),
                         key=lambda c: c[0])
    best = progress.best
    if accuracy <= best["accuracy"]:
        progress.stale += 1
        return False
    best.update(accuracy=accuracy, epoch=epoch, kept=kept, weights=(
        opt.average.weights() if kept == "ema" else
        {k: v.detach().cpu().clone() for k, v in model.backbone.state_dict().items()}))
    progress.stale = 0
    return True


def average_accuracy(net, data: Data, criterion, env, opt: Optimization, amp_dtype):
    """The valid accuracy of the weights' moving average (None without one), every rank's
    share summed."""
    from breedkit.training import evaluate

    if opt.average is None:
        return None
    with opt.average.applied():
        va = evaluate(net, data.valid_loader, criterion, env.device, amp_dtype=amp_dtype)
    correct, count = distributed.all_reduce_sum([va["correct"], va["count"]], env)
    return correct / max(1, count)


def save_outputs(args, env, model, data: Data, opt: Optimization, progress: Progress,
                 probed, sig: dict, tracker, seconds: float, amp_dtype) -> None:
    """The best epoch's weights as the model directory (breedkit.model), the history and the
    training summary as output data."""
    import torch

    from breedkit.model import save_model_dir

    best = progress.best
    if best["weights"] is None:
        raise UserError(f"no best weights to save: checkpoint folder {args.checkpoint_dir} "
                        f"resumed a finished run without them; delete it to start over")
    model.backbone.load_state_dict(best["weights"])
    summary = {
        "best_epoch": best["epoch"], "valid_accuracy": best["accuracy"],
        "kept": best["kept"],  # the raw weights of that epoch, or their moving average
        "epochs_run": len(progress.history), "train_seconds": seconds,
        "precision": precision_name(amp_dtype), "device": str(env.device),
        "world_size": env.world_size, "head_lr": opt.head_lr,
        "backbone_lr": opt.head_lr * opt.backbone_mult, "torch_version": torch.__version__,
        "hyperparameters": {k: getattr(args, k) for k in sig if hasattr(args, k)},
        "probed_head": ({k: probed[k] for k in ("valid_accuracy", "best_epoch")}
                        if probed else None),
    }
    save_model_dir(args.model_dir, model, arch=args.arch, class_names=data.class_names,
                   image_size=args.image_size, resize=data.resize,
                   eval_image_size=args.eval_image_size, interpolation_mode=data.interpolation,
                   extra={
                       "training": summary, **({"preprocess_size": args.preprocess_image_size}
                                               if args.preprocess_image_size > 0 else {})})
    os.makedirs(args.output_data_dir, exist_ok=True)
    with open(os.path.join(args.output_data_dir, "history.json"), "w") as fh:
        json.dump(progress.history, fh, indent=2)
    with open(os.path.join(args.output_data_dir, "training_summary.json"), "w") as fh:
        json.dump(summary, fh, indent=2)
    tracker.finish(summary, args.model_dir, args.output_data_dir)
    print(f"best_epoch={best['epoch']} valid_best_accuracy={best['accuracy']:.4f}", flush=True)
    log.info("model written to %s", args.model_dir)


def main(argv=None) -> int:
    args = parse_args(build_parser(), argv)
    setup_logging()
    validate(args)
    resolve_defaults(args)
    if args.mode == "linear-probe":
        return train_head(args)
    return fine_tune(args)


def fine_tune(args) -> int:
    """The recipe: data, the network (from the probed head), the optimisation, the epochs,
    the model directory. Runs under torchrun as one process of several, too."""
    import torch
    import torch.nn as nn

    from breedkit.debugger import create_hook
    from breedkit.profiling import NullProfiler, Profiler
    from breedkit.tracking import Tracker
    from breedkit.training import Checkpoints, choose_precision

    env = distributed.init(args.device)
    run = {"hook": None, "profiler": None, "tracker": None}
    failed = True
    try:
        torch.manual_seed(args.seed)
        data = load_data(args, env)
        model, probed = build_network(args, env, data.class_names)
        ckpt = Checkpoints(args.checkpoint_dir or None)
        ckpt.prepare()
        sig = signature(args, data.class_names, env)  # (with the probed head's identity)
        resumed = resume_weights(model, ckpt, sig, env)
        criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
        run["hook"] = create_hook(args.debugger_out or None, args.debugger_save_interval)
        run["hook"].register(model, criterion)
        amp_dtype = choose_precision(args.amp, env.device)
        net = model
        if env.enabled:
            net = nn.parallel.DistributedDataParallel(
                model, device_ids=[env.device.index] if env.device.type == "cuda" else None)
        steps = len(data.train_loader)
        if args.max_steps_per_epoch:
            steps = min(steps, args.max_steps_per_epoch)
        opt = make_optimization(args, env, model, probed, steps, amp_dtype)
        progress = resume_progress(resumed, opt, ckpt, env)
        log_setup(args, env, opt, amp_dtype)
        run["profiler"] = (Profiler(args.profile_out, env.device)
                           if args.profile_out and env.is_main else NullProfiler())
        run["tracker"] = Tracker(args.tensorboard_dir, enabled=env.is_main,
                                 norm_interval=args.debugger_save_interval)
        run["tracker"].params({**{k: getattr(args, k) for k in sig if hasattr(args, k)},
                               "mode": args.mode, "world_size": env.world_size,
                               "classes": len(data.class_names)})
        run.update(model=model, net=net, criterion=criterion, amp_dtype=amp_dtype)
        started = time.perf_counter()
        run_epochs(args, env, run, data, opt, progress, ckpt, sig)
        if env.is_main:
            save_outputs(args, env, model, data, opt, progress, probed, sig, run["tracker"],
                         time.perf_counter() - started, amp_dtype)
        distributed.barrier(env)
        failed = False
    finally:
        if run["tracker"] is not None:
            run["tracker"].close(failed)
        if run["hook"] is not None:  # flush Debugger output even when training failed (NaN)
            run["hook"].close()
        if run["profiler"] is not None:
            run["profiler"].close()
        distributed.shutdown(env)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
