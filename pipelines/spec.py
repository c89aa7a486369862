"""The build pipeline, described once as plain data for every backend.

Step names, pipeline parameters, hyperparameter ranges, the tuning objective, Debugger rules
and the accuracy condition live here. ``steps/`` turns them into SageMaker SDK objects; the
local engine reads the same values. Metric regexes come from the training script's own
``breedkit.logformat``, so the log and the regexes cannot disagree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from breedkit import rulespec
from breedkit.archs import ARCHS
from breedkit.monitorspec import BASELINE_FILE
from breedkit.features import MAX_VIEWS
from breedkit.logformat import METRIC_DEFINITIONS, OBJECTIVE_METRIC, OBJECTIVE_TYPE

__all__ = ["METRIC_DEFINITIONS", "OBJECTIVE_METRIC", "OBJECTIVE_TYPE", "PARAMETERS", "STEP",
           "HYPERPARAMETER_RANGES", "TRAINING_RULES", "PROFILER_RULE", "Parameter",
           "parameter", "ACCURACY_JSON_PATH", "coerce_parameter"]

SCRIPTS_DIR = str(Path(__file__).resolve().parent.parent / "scripts")
DEFAULT_PIPELINE_NAME = "DogBreedBuild"
DEFAULT_MODEL_PACKAGE_GROUP = "DogBreedModels"
DEFAULT_PREFIX = "dogbreed"


class STEP:
    """Step names: the same in SageMaker Studio and in the local engine's records."""

    PREPROCESS = "Preprocess"
    FEATURES = "Features"
    TUNE = "HPTuning"
    TUNE_FINE_TUNE = "FineTuneTuning"  # with the build option --tune-fine-tune
    TRAIN = "TrainFinal"
    RULES = "TrainingRules"
    EVALUATE = "Evaluate"
    CHECK_RULES = "CheckTrainingRules"
    RULES_FIRED = "TrainingRulesFired"
    CHECK = "CheckAccuracy"
    CHECK_IMPROVEMENT = "CheckImprovement"
    NOT_BETTER = "NotBetterThanApproved"
    REGISTER = "RegisterModel"
    FAIL = "AccuracyTooLow"


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str  # String, Integer, Float, Boolean (SageMaker's ParameterTypeEnum)
    default: Any
    help: str
    choices: tuple = ()
    minimum: float | None = None


PARAMETERS: tuple[Parameter, ...] = (
    Parameter("InputDataUrl", "String", "",
              "S3 URI of the data: a prefix with image folders, or a .zip (see python -m "
              "pipelines.data.stage); empty: s3://<bucket>/<prefix>/data/"),
    Parameter("ProcessingInstanceType", "String", "ml.m5.xlarge",
              "instance for Preprocess and Evaluate"),
    Parameter("TrainingInstanceType", "String", "ml.g4dn.xlarge", "instance for TrainFinal"),
    Parameter("TuningInstanceType", "String", "ml.m5.large",
              "instance for the tuning trials (default: ml.m5.large for linear-probe trials, "
              "ml.g4dn.xlarge with the build option --tuning-mode fine-tune)"),
    Parameter("ImageSize", "Integer", 224, "training crop size in pixels", minimum=16),
    Parameter("PreprocessImageSize", "Integer", 0,
              "shorter side preprocessing stores images at (0: derived, about 1.15x the larger "
              "of ImageSize and EvalImageSize: 256 for 224); below a crop is refused",
              minimum=0),
    Parameter("EvalImageSize", "Integer", 0,
              "evaluation and serving crop (0: ImageSize); a larger one often scores better "
              "(FixRes)", minimum=0),
    Parameter("BaseModel", "String", "resnet50",
              "the backbone: ResNet, ConvNeXt, EfficientNetV2 or ViT-B/16 (docs/recipe.md)",
              choices=ARCHS),
    Parameter("Pretrained", "String", "true", "start from ImageNet weights",
              choices=("true", "false")),
    Parameter("FeatureViews", "Integer", 4,
              "feature vectors per training image the Features step caches for the linear-"
              "probe trials: the center crop, its mirror (HorizontalFlip), random-resized crops",
              minimum=1),
    Parameter("HorizontalFlip", "String", "true",
              "random horizontal flips in training and the Features step's views (false for "
              "digits, text, signs: classes that mirroring changes)", choices=("true", "false")),
    Parameter("FineTuneLayers", "String", "all",
              "layers TrainFinal trains: all; layer3: the last two stages and the head (a ResNet's "
              "layer3, layer4, fc); layer4: the last stage and the head (docs/recipe.md)",
              choices=("all", "layer3", "layer4")),
    Parameter("TuningEpochs", "Integer", 4,
              "most epochs a tuning trial may train (linear-probe: passes over every cached "
              "view)", minimum=1),
    Parameter("Epochs", "Integer", 10, "epochs of TrainFinal", minimum=1),
    # TrainFinal's own settings after a linear probe (the probe's tuned ones describe a head on
    # frozen features, not a network learning: see docs/recipe.md)
    Parameter("FineTuneLearningRate", "Float", 1e-4,
              "TrainFinal (after linear-probe trials): the pretrained network's and the probed "
              "head's peak AdamW rate, for batch FineTuneBatchSize on one process (tuned "
              "instead with --tune-fine-tune)",
              minimum=1e-7),
    Parameter("FineTuneBatchSize", "Integer", 32, "TrainFinal's batch (after a linear probe)",
              minimum=1),
    Parameter("FineTuneWeightDecay", "Float", 0.05,
              "TrainFinal's decoupled weight decay (after a linear probe; tuned instead with "
              "--tune-fine-tune)", minimum=0.0),
    Parameter("FineTuneLabelSmoothing", "Float", 0.1,
              "TrainFinal's label smoothing (after a linear probe; tuned instead with "
              "--tune-fine-tune)", minimum=0.0),
    Parameter("MaxTuningJobs", "Integer", 8, "tuning trials in all", minimum=1),
    Parameter("MaxParallelTuningJobs", "Integer", 2, "tuning trials at once", minimum=1),
    Parameter("MaxFineTuneJobs", "Integer", 4,
              "fine-tuning trials from the best probed head, in all (build option "
              "--tune-fine-tune): they tune what FineTuneLearningRate, FineTuneWeightDecay and "
              "FineTuneLabelSmoothing otherwise fix", minimum=1),
    Parameter("FineTuneTuningEpochs", "Integer", 2,
              "epochs of each fine-tuning trial (--tune-fine-tune)", minimum=1),
    Parameter("AccuracyThreshold", "Float", 0.7,
              "validation accuracy needed to register the model", minimum=0.0),
    Parameter("BlockingRules", "String", ",".join(rulespec.DEFAULT_BLOCKING),
              "training rules whose finding keeps the model out of the registry (comma-"
              "separated, or none): " + ", ".join(rulespec.RULES)),
    Parameter("ModelApprovalStatus", "String", "PendingManualApproval",
              "status of the registered version",
              choices=("PendingManualApproval", "Approved", "Rejected")),
    Parameter("MaxRuntimeSeconds", "Integer", 86400, "limit of each training job", minimum=60),
    Parameter("ApprovedModelDataUrl", "String", "",
              "the group's newest Approved version's model.tar.gz, which Evaluate compares "
              "the new model with on the same test images (--start and --local pass it; "
              "default: a placeholder prefix, no comparison)"),
    Parameter("ApprovedModelVersion", "String", "none",
              "that version's number, for the reports and the registered metadata"),
    Parameter("RequireImprovement", "String", "false",
              "true: a model not more accurate on the test split than the approved version "
              "is not registered (NotBetterThanApproved)", choices=("true", "false")),
)
# where ApprovedModelDataUrl points when no version is approved: a prefix holding only this
# object (a ProcessingInput must name something that exists), under the pipeline's prefix
NO_APPROVED_VERSION = ("no-approved-version", "README.txt",
                       b"No version was approved when this execution started: Evaluate has "
                       b"nothing to compare the new model with.\n")


def parameter(name: str, parameters: tuple | None = None) -> Parameter:
    for p in PARAMETERS if parameters is None else parameters:
        if p.name == name:
            return p
    raise KeyError(name)


def coerce_parameter(name: str, value: str, parameters: tuple | None = None):
    """A ``--param Name=Value`` string as the parameter's type (of ``parameters``, default the
    build pipeline's); ValueError says what is wrong."""
    parameters = PARAMETERS if parameters is None else parameters
    names = [p.name for p in parameters]
    if name == "TuningMode":
        raise ValueError("TuningMode is a build option now (SageMaker fixes the trials' image "
                         "when the pipeline is built): --tuning-mode fine-tune")
    try:
        spec = parameter(name, parameters)
    except KeyError:
        raise ValueError(f"unknown pipeline parameter {name!r}; known: "
                         f"{', '.join(names)}") from None
    try:
        if spec.type == "Integer":
            result = int(value)
        elif spec.type == "Float":
            result = float(value)
        elif spec.type == "Boolean":
            lowered = value.strip().lower()
            if lowered not in ("true", "false"):
                raise ValueError
            result = lowered == "true"
        else:
            result = value
    except ValueError:
        raise ValueError(f"{name} must be {spec.type.lower()}, got {value!r}") from None
    if spec.choices and result not in spec.choices:
        raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}")
    if spec.minimum is not None and result < spec.minimum:
        raise ValueError(f"{name} must be >= {spec.minimum}, got {value!r}")
    if spec.name == "BlockingRules":
        rulespec.parse_blocking(result)  # ValueError names the unknown rule
    if spec.name == "AccuracyThreshold" and result > 1:
        raise ValueError(f"AccuracyThreshold is a fraction in [0, 1], got {value!r}")
    if spec.name in ("PreprocessImageSize", "EvalImageSize") and 0 < result < 16:
        raise ValueError(f"{name} must be 0 or >= 16, got {value!r}")
    if spec.name == "FeatureViews" and result > MAX_VIEWS:
        raise ValueError(f"FeatureViews must be <= {MAX_VIEWS}, got {value!r}")
    if spec.name in ("BatchInputUrl", "ModelDataUrl") and not str(result).startswith("s3://"):
        raise ValueError(f"{name} must be an s3:// URI, got {value!r}")
    if spec.name.endswith("InstanceType") and not str(result).startswith("ml."):
        raise ValueError(f"{name} must be a SageMaker instance type such as ml.m5.xlarge, "
                         f"got {value!r}")
    return result


def size_problem(params: dict) -> str:
    """Why the run's image sizes (given or default) would upsample every image, or do not fit
    the backbone ('' if neither): preprocess.py and train.py refuse them too, but only once
    their jobs run."""
    from breedkit.archs import size_problem as backbone_problem
    from breedkit.transforms import size_problem as problem

    def value(name):
        return params.get(name, parameter(name).default)
    crop, eval_crop = int(value("ImageSize")), int(value("EvalImageSize"))
    return (problem(int(value("PreprocessImageSize")), crop, eval_crop)
            or backbone_problem(str(value("BaseModel")), crop, eval_crop))


# What the tuning trials train, fixed when the pipeline is built (a build option, --tuning-mode):
# SageMaker fixes a tuning job's image then, and the two modes want different ones.
#   linear-probe: the trials train only the new head on the Features step's cached backbone
#                 features, on a CPU instance with the CPU image; TrainFinal fine-tunes from the
#                 best head (LP-FT)
#   fine-tune:    every trial fine-tunes the whole network on images, on a GPU instance with
#                 the GPU image (the old path)
TUNING_MODES = {"linear-probe": {"instance": "ml.m5.large", "image_instance": "ml.m5.large"},
                "fine-tune": {"instance": "ml.g4dn.xlarge", "image_instance": "ml.g4dn.xlarge"}}
DEFAULT_TUNING_MODE = "linear-probe"


def parameter_default(name: str, tuning_mode: str = DEFAULT_TUNING_MODE):
    """A parameter's default in a pipeline built with ``tuning_mode``."""
    if name == "TuningInstanceType":
        return TUNING_MODES[tuning_mode]["instance"]
    return parameter(name).default


def tuning_advice(params: dict, tuning_mode: str = DEFAULT_TUNING_MODE) -> str:
    """A note when the tuning trials would train whole networks without a GPU ('' if none)."""
    instance = str(params.get("TuningInstanceType", parameter_default("TuningInstanceType",
                                                                      tuning_mode)))
    family = instance.split(".")[1] if instance.count(".") >= 2 else ""
    if tuning_mode == "fine-tune" and not family.startswith(("g", "p")):
        return (f"note: --tuning-mode fine-tune trains every trial on images, and "
                f"TuningInstanceType {instance} has no GPU: give --param "
                f"TuningInstanceType=ml.g4dn.xlarge (or another GPU type)")
    return ""


def unused_parameters_note(params: dict, tuning_mode: str = DEFAULT_TUNING_MODE,
                           tune_fine_tune: bool = False) -> str:
    """A note naming the given parameters this build's TrainFinal does not read ('' if none):
    the fine-tune's settings are tuned instead (--tune-fine-tune, or fine-tune trials)."""
    fixed = ({LP_FT_HYPERPARAMETERS[hp] for hp in FINE_TUNE_RANGES} if tune_fine_tune else
             set(LP_FT_HYPERPARAMETERS.values()) if tuning_mode == "fine-tune" else set())
    given = sorted(name for name in params if name in fixed)
    if not given:
        return ""
    why = ("--tune-fine-tune tunes them (FineTuneTuning)" if tune_fine_tune else
           "--tuning-mode fine-tune trials tune the fine-tune")
    return f"note: {', '.join(given)} not used: {why}"


class Param(str):
    """In an argument list: the value of the pipeline parameter of this name."""


class BuildOption(str):
    """In an argument list: the value of this build option (a BuildOptions field)."""


# The processing scripts' container contract: script, arguments (container paths, and
# parameters), inputs and outputs. The cloud steps pass these paths to SageMaker; the local
# engine maps each container path to a folder of its own.
PROCESSING_ROOT = "/opt/ml/processing"
# The data input is not /opt/ml/processing/input: a FrameworkProcessor mounts its own code and
# entrypoint under that folder (input/code/, input/entrypoint/), which would be found there.
PREPROCESS_JOB = {
    "script": "preprocess.py",
    "inputs": {"data": f"{PROCESSING_ROOT}/data"},
    "outputs": {name: f"{PROCESSING_ROOT}/{name}" for name in ("train", "valid", "test",
                                                               "manifest")},
    "arguments": ["--input-dir", f"{PROCESSING_ROOT}/data", "--output-dir", PROCESSING_ROOT,
                  "--image-size", Param("PreprocessImageSize"),
                  "--crop-size", Param("ImageSize"), "--eval-crop-size", Param("EvalImageSize")],
}
FEATURES_JOB = {
    "script": "features.py",
    "inputs": {"train": f"{PROCESSING_ROOT}/train", "valid": f"{PROCESSING_ROOT}/valid"},
    "outputs": {"features": f"{PROCESSING_ROOT}/features"},
    "arguments": ["--train-dir", f"{PROCESSING_ROOT}/train",
                  "--valid-dir", f"{PROCESSING_ROOT}/valid",
                  "--output-dir", f"{PROCESSING_ROOT}/features",
                  "--arch", Param("BaseModel"), "--pretrained", Param("Pretrained"),
                  "--image-size", Param("ImageSize"), "--views", Param("FeatureViews"),
                  "--hflip", Param("HorizontalFlip"),
                  "--tuning-mode", BuildOption("tuning_mode")],
}
EVALUATE_JOB = {
    "script": "evaluate.py",
    "inputs": {"model": f"{PROCESSING_ROOT}/model", "valid": f"{PROCESSING_ROOT}/valid",
               "test": f"{PROCESSING_ROOT}/test", "approved": f"{PROCESSING_ROOT}/approved"},
    "outputs": {"evaluation": f"{PROCESSING_ROOT}/evaluation"},
    "arguments": ["--model-dir", f"{PROCESSING_ROOT}/model",
                  "--valid-dir", f"{PROCESSING_ROOT}/valid",
                  "--test-dir", f"{PROCESSING_ROOT}/test",
                  "--output-dir", f"{PROCESSING_ROOT}/evaluation",
                  "--approved-model", f"{PROCESSING_ROOT}/approved",
                  "--approved-version", Param("ApprovedModelVersion")],
}
TRAINING_CHANNELS = ("train", "valid")  # never the test split
# the tuning trials also get the Features step's output; TrainFinal the best trial's model
# (a probed head in linear-probe mode, which train.py starts from: breedkit.probe)
FEATURES_CHANNEL = "features"
HEAD_CHANNEL = "head"

# TrainFinal writes what its rules and report are made of into its output data (uploaded as the
# job's output.tar.gz) and TensorBoard events where the job's TensorBoardOutputConfig syncs them
TRAINING_OUTPUT_DATA = "/opt/ml/output/data"
TENSORBOARD_DIR = "/opt/ml/output/tensorboard"
TRAIN_FINAL_MONITORING = {
    "debugger-out": f"{TRAINING_OUTPUT_DATA}/{rulespec.HOOK_DIR}",
    "profile-out": f"{TRAINING_OUTPUT_DATA}/{rulespec.PROFILE_DIR}",
    "tensorboard-dir": TENSORBOARD_DIR,
}
RULES_JOB = {
    "script": "training_rules.py",
    "inputs": {"training": f"{PROCESSING_ROOT}/training"},
    "outputs": {"rules": f"{PROCESSING_ROOT}/rules"},
    "arguments": ["--training-output", f"{PROCESSING_ROOT}/training",
                  "--output-dir", f"{PROCESSING_ROOT}/rules",
                  "--blocking-rules", Param("BlockingRules")],
}
RULES_REPORT = "TrainingRulesReport"  # the PropertyFile of rules.json
# what a registered version records of TrainingRules (CustomerMetadataProperties)
BLOCKING_FIRED_METADATA = "training_rules_blocking_fired"
PROFILER_REPORT_METADATA = "profiler_report"
EVALUATION_REPORT_FILE = "report.html"  # Evaluate's page for the approver (breedkit.report)
EVALUATION_REPORT_METADATA = "evaluation_report"
MLFLOW_RUN_METADATA = "mlflow_run"


def rule_metadata_key(rule: str) -> str:
    return f"rule:{rule}"


def tag_metadata_key(key: str) -> str:
    """Where a build tag (``--tag key=value``) is recorded on a registered version."""
    return f"tag:{key}"

# Hyperparameter ranges of the tuning step. A bound given as a string names the pipeline
# parameter that supplies it. "lr" is the new head's rate for one process; pretrained layers
# follow at train.py's --backbone-lr-mult (0.1) times it, so 1e-4..3e-3 puts the backbone at
# 1e-5..3e-4, AdamW's usual fine-tuning range. AdamW's decoupled weight decay acts as
# lr * weight_decay per step: 0.01..0.1 (default 0.05) is the range where it regularizes at all.
# The same ranges serve both tuning modes (SageMaker fixes a tuning job's ranges when the pipeline
# is built). With linear-probe trials, "lr" is the head's rate on the cached features, and
# TrainFinal fine-tunes the whole network from the probed head at lr * --backbone-lr-mult
# (the head joins the backbone's lower rate: it is trained already; breedkit.probe).
HYPERPARAMETER_RANGES: dict[str, dict] = {
    "lr": {"type": "Continuous", "min": 1e-4, "max": 3e-3, "scaling": "Logarithmic"},
    "batch-size": {"type": "Categorical", "values": [16, 32, 64]},
    "epochs": {"type": "Integer", "min": 1, "max": "TuningEpochs", "scaling": "Auto"},
    "weight-decay": {"type": "Continuous", "min": 0.01, "max": 0.1, "scaling": "Logarithmic"},
    "label-smoothing": {"type": "Continuous", "min": 0.0, "max": 0.2, "scaling": "Linear"},
}
# With the build option --tune-fine-tune, a second tuning step (FineTuneTuning) runs short
# fine-tuning trials from the best probed head, on TrainingInstanceType with TrainFinal's image,
# over what LP_FT_HYPERPARAMETERS otherwise fixes by parameter (the batch stays
# FineTuneBatchSize: the rates are tuned for it); TrainFinal takes the best trial's values.
FINE_TUNE_RANGES: dict[str, dict] = {
    "backbone-lr": {"type": "Continuous", "min": 1e-5, "max": 3e-4, "scaling": "Logarithmic"},
    "weight-decay": {"type": "Continuous", "min": 0.01, "max": 0.1, "scaling": "Logarithmic"},
    "label-smoothing": {"type": "Continuous", "min": 0.0, "max": 0.2, "scaling": "Linear"},
}
TUNING_STRATEGY = "Bayesian"
EARLY_STOPPING = "Auto"

# Hyperparameters every training job gets, by pipeline parameter (or fixed value).
STATIC_HYPERPARAMETERS: dict[str, str] = {
    "arch": "BaseModel",
    "pretrained": "Pretrained",
    "image-size": "ImageSize",
    "hflip": "HorizontalFlip",
}
TUNING_HYPERPARAMETERS = {"mode": BuildOption("tuning_mode")}  # the head, or it all
TRAIN_FINAL_HYPERPARAMETERS = {"fine-tune": "FineTuneLayers", "eval-image-size": "EvalImageSize",
                               "preprocess-image-size": "PreprocessImageSize"}
# with linear-probe trials, TrainFinal fine-tunes with settings of its own (the trials tuned the
# probe's), by pipeline parameter; the probe's tuned lr stays the rate of a new head, if no
# probed head is found. With fine-tune trials, the trials' own settings.
LP_FT_HYPERPARAMETERS = {"backbone-lr": "FineTuneLearningRate", "batch-size": "FineTuneBatchSize",
                         "weight-decay": "FineTuneWeightDecay",
                         "label-smoothing": "FineTuneLabelSmoothing"}

# The rules the TrainingRules step evaluates (scripts/breedkit/rules.py), by SageMaker
# Debugger's built-in names; with the opt-in SageMaker Debugger build option, the built-in rules
# of the same names (smdebug_rulesconfig) and its ProfilerReport rule run too.
TRAINING_RULES = rulespec.RULES
PROFILER_RULE = "ProfilerReport"
SYSTEM_MONITOR_INTERVAL_MS = 500

# Evaluate scores the model TrainFinal keeps on the valid split (validation.json) and on the
# test split (evaluation.json), in the Model Registry's multiclass format. The condition is
# validation accuracy >= AccuracyThreshold (the split the weights were chosen by: tuning and
# early stopping never see the test split); the test split's metrics are registered with the
# version (ModelQuality), an unbiased figure for the approver.
VALIDATION_REPORT = "ValidationReport"
VALIDATION_FILE = "validation.json"
EVALUATION_REPORT = "EvaluationReport"
EVALUATION_FILE = "evaluation.json"
# the version's drift baseline (Evaluate's output; RegisterModel's DriftCheckBaselines
# ModelDataQuality statistics; what the monitoring job compares live traffic with)
DRIFT_BASELINE_FILE = BASELINE_FILE
# the two accuracies, also as the registered version's CustomerMetadataProperties
ACCURACY_METADATA = {"validation_accuracy": VALIDATION_REPORT,
                     "test_accuracy": EVALUATION_REPORT}
ACCURACY_JSON_PATH = "multiclass_classification_metrics.accuracy.value"
# the comparison with the approved version (breedkit.evaluation.paired_comparison): on the
# registered version (metadata), and RequireImprovement's gate
COMPARISON_METADATA = {"vs_approved_version": "ApprovedModelVersion"}  # from the parameter
ACCURACY_DELTA_METADATA = "accuracy_delta"
COMPARISON_SUMMARY_JSON_PATH = "comparison_summary"
IMPROVEMENT_JSON_PATH = "passes_require_improvement"


def accuracy_of(report: dict) -> float:
    """The accuracy in an Evaluate report (KeyError/TypeError/ValueError if it has none)."""
    value = report
    for part in ACCURACY_JSON_PATH.split("."):
        value = value[part]
    return float(value)

# What the registered model serves.
CONTENT_TYPES = ("image/jpeg", "image/png", "application/x-image", "application/json")
RESPONSE_TYPES = ("application/json",)
CPU_INFERENCE_INSTANCES = ("ml.m5.large", "ml.m5.xlarge", "ml.m5.2xlarge", "ml.c5.xlarge",
                           "ml.c5.2xlarge")
GPU_INFERENCE_INSTANCES = ("ml.g4dn.xlarge", "ml.g4dn.2xlarge", "ml.g5.xlarge", "ml.g5.2xlarge")
# the additional inference specification with the GPU image, which the deploy adds to a version
# (UpdateModelPackage) and names (ContainerDefinition.InferenceSpecificationName) for GPU
# instance types
GPU_INFERENCE_SPECIFICATION = "gpu"

# Batch scoring in SageMaker (a Batch Transform job, started by ``python -m pipelines.batch
# --sagemaker`` or by the DogBreedBatch pipeline): one image per S3 object, one record per
# request (SplitType None, SingleRecord), the served model's handlers; each answer is written as
# ``<output>/<the object's key under the input prefix>.out``. ERRORS_IN_BODY makes the handler
# answer an image it cannot use with {"error": {...}} (HTTP 200), so one bad file is a record
# that says why instead of a failed job. 6 MB is Batch Transform's default payload and
# InvokeEndpoint's limit: larger images are refused by SageMaker before the handler sees them.
BATCH_PIPELINE_NAME = "DogBreedBatch"
BATCH_MODEL_STEP = "BatchModel"  # (ModelStep names its step BatchModel-CreateModel)
BATCH_SCORE_STEP = "BatchScore"
BATCH_JOB_PREFIX = "dogbreed-batch"
BATCH_INSTANCE_TYPE = CPU_INFERENCE_INSTANCES[1]  # the version's SupportedTransformInstanceTypes
TRANSFORM = {"content_type": "application/x-image", "accept": "application/json",
             "split_type": "None", "assemble_with": "None", "strategy": "SingleRecord",
             "max_payload_mb": 6, "max_concurrent": 2,
             "environment": {"ERRORS_IN_BODY": "true"}}
BATCH_PARAMETERS: tuple[Parameter, ...] = (
    Parameter("ModelPackageArn", "String", "",
              "the registered version scoring (set by --upsert --batch and --start --batch to "
              "the newest Approved one): recorded in the job's environment"),
    Parameter("InferenceImage", "String", "", "that version's inference image"),
    Parameter("ModelDataUrl", "String", "", "that version's model.tar.gz"),
    Parameter("BatchInputUrl", "String", "",
              "s3:// prefix of the images to score (default s3://<bucket>/<prefix>/batch/input/)"),
    Parameter("TransformInstanceType", "String", BATCH_INSTANCE_TYPE, "Batch Transform instance"),
    Parameter("TransformInstanceCount", "Integer", 1, "Batch Transform instances", minimum=1),
)

# Retries of the cloud job steps: SageMaker capacity (a common g4dn failure) and account
# limits with a long back-off, throttling and service faults with a short one. Other errors
# (a bug, bad data) fail at once.
# RESOURCE_LIMIT gets one retry only: in a new account the quota of a GPU training instance is
# often 0, which waiting never raises (about 15 minutes of doubling waits before, for nothing)
RETRY_LIMIT = {"exceptions": ("RESOURCE_LIMIT",), "interval_seconds": 60, "backoff_rate": 1.0,
               "max_attempts": 1}
RETRY_CAPACITY = {"exceptions": ("CAPACITY_ERROR",), "interval_seconds": 60,
                  "backoff_rate": 2.0, "max_attempts": 5}
RETRY_SERVICE = {"exceptions": ("THROTTLING", "SERVICE_FAULT"), "interval_seconds": 5,
                 "backoff_rate": 2.0, "max_attempts": 5}

# What each job installs into its PyTorch container: a file of scripts/requirements/ that becomes
# the job's own requirements.txt, or None for nothing (see scripts/requirements/README.md).
JOB_REQUIREMENTS = {"preprocess": None, "features": None, "tuning": None, "train": "train.txt",
                    "train-mlflow": "train-mlflow.txt", "rules": "rules.txt",
                    "evaluate": "evaluate.txt"}
REQUIREMENTS_DIR = "requirements"  # under SCRIPTS_DIR; never uploaded itself

# Containers: the newest PyTorch version with both a SageMaker training and a SageMaker
# inference DLC (2026-12: AWS publishes pytorch-inference only up to 2.6, the last with
# TorchServe; training images go on to 2.10, then a training-only repository). README: "The
# PyTorch version the jobs and endpoints run".
FRAMEWORK_VERSION = "2.6.0"
PY_VERSION = "py312"


@dataclass(frozen=True)
class BuildOptions:
    """Structural choices, fixed when the pipeline is built (not per execution).

    Spot training is one: SageMaker rejects MaxWaitTimeInSeconds unless spot is on, so it
    cannot be switched by a pipeline parameter. Instance counts change the distribution set-up.
    """

    training_rules: bool = True  # TrainFinal's hook, the TrainingRules step and its gate
    profiler: bool = True  # TrainFinal's profiling data and report
    sagemaker_debugger: bool = False  # SageMaker Debugger's built-in rules too (opt-in)
    mlflow_arn: str = ""  # a SageMaker managed MLflow tracking server: runs logged there
    spot: bool = False
    training_instance_count: int = 1
    tuning_mode: str = DEFAULT_TUNING_MODE  # what the trials train (TUNING_MODES)
    tune_fine_tune: bool = False  # fine-tuning trials from the best probed head too
    cache_expire: str = "P30D"


def script_files(scripts_dir: str) -> dict[str, Path]:
    """The container scripts by relative POSIX path, sorted (Python caches left out)."""
    root = Path(scripts_dir)
    return {path.relative_to(root).as_posix(): path for path in sorted(root.rglob("*"))
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"}


def files_digest(files: dict[str, bytes]) -> str:
    """sha256 over names and bytes."""
    digest = hashlib.sha256()
    for name, data in files.items():
        digest.update(name.encode() + b"\0" + data + b"\0")
    return digest.hexdigest()


@lru_cache(maxsize=None)
def scripts_digest(scripts_dir: str) -> str:
    """sha256 over the container scripts' paths and bytes (caches ignored)."""
    return files_digest({name: path.read_bytes()
                         for name, path in script_files(scripts_dir).items()})
