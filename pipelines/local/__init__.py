"""The embedded local engine: the build pipeline of pipelines/spec.py on this machine.

Same step names, parameters, scripts, metric regexes, condition and registration as the
SageMaker pipeline; each step runs its container script as a subprocess under SageMaker's
container contract. Entry point: ``python -m pipelines.run --local``.
"""
