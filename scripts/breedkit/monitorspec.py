"""What the monitoring job says, named once: read by ``monitor.py`` (which prints it), by the
local ``pipelines.monitor`` and by the deploy's CloudWatch metric filters
(``pipelines/deploy/monitoring.py``). Standard library only: the deploy job installs boto3 alone.
"""

BASELINE_FILE = "baseline.json"  # a version's drift baseline (evaluate.py writes it)
MARKER = "dogbreed_monitor"  # the metrics line is a JSON object with this key set to 1
NAMESPACE = "DogBreed/Monitor"  # CloudWatch
DIMENSIONS = ("EndpointName", "ModelVersion")
# each a number in the metrics line (left out when it has no value: too little traffic)
METRICS = ("Requests", "Images", "ErrorRate", "LowConfidenceShare", "ClassPSI", "ConfidenceKS",
           "DriftingInputStatistics", "Drift")
