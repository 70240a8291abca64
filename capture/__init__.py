"""mlink-capture: record SpiderRock MLink JSONFramed streams into partitioned Parquet."""

__version__ = "0.1.0"
