"""Code shared by the container scripts (preprocess, train, evaluate, inference).

Everything here runs inside SageMaker's PyTorch containers as well as on a laptop, so it must
never import boto3 or the SageMaker SDK. Training and inference import the same model, image
and transform code from here, so they cannot drift apart.
"""

__version__ = "0.1.0"
