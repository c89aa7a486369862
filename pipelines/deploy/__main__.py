"""``python -m pipelines.deploy``: see ``pipelines.deploy.cli``."""

from pipelines import cli
from pipelines.deploy.cli import main

cli.run(main)
