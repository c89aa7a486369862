"""``python -m pipelines.deploy``: see ``pipelines.deploy.cli``."""

import sys

from pipelines.deploy.cli import main

sys.exit(main())
