"""The architectures and fine-tuning choices train.py offers.

Torch-free, so the pipeline's description (pipelines/spec.py) and tools that only deploy or
register models can name them without importing torch.
"""

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101")
FINE_TUNE_CHOICES = ("all", "layer3", "layer4", "head")
