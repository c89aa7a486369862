"""The training rules by name: what the TrainingRules step evaluates and what may block
registration. Plain data (no smdebug, no torch), shared by scripts/training_rules.py, the
pipeline's description (pipelines/spec.py) and its parameter checks."""

from __future__ import annotations

# SageMaker Debugger's built-in rule names, in the order they are reported, with the name of
# each one's configuration in smdebug_rulesconfig (the opt-in built-in rules use it)
RULES = ("LossNotDecreasing", "Overfit", "Overtraining", "VanishingGradient", "ExplodingTensor",
         "PoorWeightInitialization")
SAGEMAKER_RULE_CONFIGS = {"LossNotDecreasing": "loss_not_decreasing", "Overfit": "overfit",
                          "Overtraining": "overtraining",
                          "VanishingGradient": "vanishing_gradient",
                          "ExplodingTensor": "exploding_tensor",
                          "PoorWeightInitialization": "poor_weight_initialization"}
# a finding of these keeps the model out of the registry (the BlockingRules parameter)
DEFAULT_BLOCKING = ("ExplodingTensor", "VanishingGradient")
VERDICTS = ("NoIssuesFound", "IssuesFound", "Error")

RULES_FILE = "rules.json"
REPORT_FILE = "profiler-report.html"
HOOK_DIR, PROFILE_DIR = "debugger", "profiler"  # under the training job's output data
# in rules.json: how many blocking rules fired (the gate reads this) and their names
BLOCKING_COUNT_PATH = "blocking.count"
BLOCKING_NAMES_PATH = "blocking.fired"  # "" when none fired
# the same, never empty ("none"): what a registered version records (CreateModelPackage
# refuses an empty CustomerMetadataProperties value)
BLOCKING_SUMMARY_PATH = "blocking.summary"


def parse_blocking(text: str) -> tuple[str, ...]:
    """``"ExplodingTensor,VanishingGradient"`` as a tuple; ``""`` or ``"none"`` blocks nothing.
    ValueError names what is unknown and what is allowed."""
    text = (text or "").strip()
    if text.lower() in ("", "none"):
        return ()
    names = tuple(dict.fromkeys(n.strip() for n in text.split(",") if n.strip()))
    unknown = [n for n in names if n not in RULES]
    if unknown:
        raise ValueError(f"unknown rule(s) {', '.join(unknown)}; BlockingRules is a comma-"
                         f"separated list of {', '.join(RULES)}, or none")
    return names
