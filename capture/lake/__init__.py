"""The lake: committed local Parquet files also go to S3-compatible storage and are registered in
Apache Iceberg tables (one per message type, plus ``capture_events``), exactly once per
(stripe, seq).

Only this package imports the S3 client (boto3) and pyiceberg, and only when ``[lake]`` is
configured (``capture.lake.pipeline`` is imported by the daemon then). The pieces:

* ``files``: a committed local file as the lake sees it, its deterministic object key, the
  start-up scan of local files;
* ``store``: uploads with ``If-None-Match: *`` (an object is never overwritten);
* ``tables``: the Iceberg side (catalog, table creation and evolution, ``add_files`` commits
  whose snapshot summaries carry this host's per-stripe high-water ``_seq``);
* ``pipeline``: the daemon-side coordinator (a trio task): uploads, batched commits, the hold on
  the journal (``floor``), lag figures for the health file.

Design notes: docs/lake.md.
"""
