"""One module per pipeline step: each turns pipelines.spec into that step's SageMaker object.

Steps receive a ``BuildContext`` (parameters, session, role, locations, options) and the steps
they depend on; they never read the command line or the environment.
"""
