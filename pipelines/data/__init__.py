"""Getting data to the pipeline.

- ``stage``: ``python -m pipelines.data.stage SOURCE``: put a data set (folder, zip, URL,
  dogImages, sklearn-digits) into S3 as the pipeline's InputDataUrl.
- ``download``: resumable, checksummed, cached downloads of http(s) URLs.
- ``sample``: small real data sets that need no download (scikit-learn's digits), rendered as
  image folders; ``python -m pipelines.data.sample sklearn-digits DEST``.
"""
