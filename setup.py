"""dogbreed-mlops: fine-tune a ResNet on image folders with SageMaker Pipelines or locally."""

from pathlib import Path

from setuptools import setup

# torch/torchvision are pinned: a bare requirement can pull a newer multi-GB CUDA build.
# numpy < 2.3: smdebug 1.0.34 writes tensors with ndarray.tostring, removed in numpy 2.3.
# smdebug imports requests, pandas and psutil without declaring them.
INSTALL_REQUIRES = [
    "torch==2.14.1",
    "torchvision==0.29.1",
    "numpy>=1.26,<2.3",
    "pillow>=10.1",
    "tqdm>=4.66",
    "scikit-learn>=1.4",
    "matplotlib>=3.8",
    "smdebug==1.0.34",
    "requests",
    "pandas",
    "psutil",
    # TensorBoard's event writer and reader (2.20: resolves with smdebug's protobuf <= 3.20.3);
    # its server imports pkg_resources, which setuptools 81 and later no longer ship
    "tensorboard>=2.20,<2.21",
    "setuptools>=70,<81",
    # the cloud pipeline: SDK 2.x, in maintenance until its end of support on 2027-07-06. 3.x
    # registers through ModelStep(ModelBuilder.register(...)) and trains with ModelTrainer,
    # which takes no Debugger rules or profiler (docs/sagemaker.md: "Moving to SDK 3.x")
    "sagemaker>=2.257,<3",
    "boto3",
    # the local engine's tuner, and the local endpoint's HTTP server
    "optuna>=4,<6",
    "aiohttp>=3.14.5,<4",  # keep-alive timer armed at connect: the header timeout
]

# experiment tracking, optional (pip install -e '.[mlflow]'): MLflow's client without its server
# and UI, and the SQL store it needs for a local tracking database (MLflow 3 refuses its old file
# store); `mlflow ui` comes with the full `mlflow` package
MLFLOW_REQUIRES = ["mlflow-skinny>=3.17,<3.18", "sqlalchemy>=2,<3", "alembic>=1.13,<2"]

# what CodeBuild's build job installs (tests of the definition, IAM and the template), once
BUILD_REQUIRES = [line.split("#")[0].strip() for line in
                  (Path(__file__).parent / "requirements-build.txt").read_text().splitlines()
                  if line.split("#")[0].strip()]

DEV_REQUIRES = [*MLFLOW_REQUIRES, *BUILD_REQUIRES,
    "sagemaker-inference==1.10.1",  # the serving toolkit, to check our errors map to 4xx
]

setup(
    name="dogbreed-mlops",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    package_dir={"breedkit": "scripts/breedkit"},
    packages=["breedkit", "pipelines", "pipelines.data", "pipelines.deploy", "pipelines.local",
              "steps"],
    install_requires=INSTALL_REQUIRES,
    extras_require={"dev": DEV_REQUIRES, "mlflow": MLFLOW_REQUIRES},
)
