"""Deploying registered model versions to endpoints, locally or on SageMaker.

``python -m pipelines.deploy`` runs ``cli``. Imports run one way: cli -> local / sagemaker ->
smoke / endpoints; nothing imports cli, and the modules the deploy command loads need only
boto3 and requests (``requirements-deploy.txt``).

- ``cli``: the command: arguments, errors as one line, ``--outputs``.
- ``local``: blue/green deploys onto local endpoints.
- ``sagemaker``: the same on SageMaker real-time endpoints (boto3), repairing what an earlier
  run left behind.
- ``smoke``: the smoke test's image and the checks of an answer, shared by both.
- ``endpoints``: local endpoint records, starting and stopping them;
  ``python -m pipelines.deploy.endpoints list|invoke|delete``.
- ``server``: one local endpoint with SageMaker's serving contract;
  ``python -m pipelines.deploy.server --model-data ...`` (started by ``endpoints``).
"""

