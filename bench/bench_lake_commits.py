"""Iceberg commit latency over many commits (docs/lake.md, "Commits over months").

One table like the capture's (the lake's table properties: manifest merging, old metadata
deleted), moto's S3 server and the SQLite catalog on loopback, N commits of one small file each
with a watermark in every snapshot summary, snapshot expiry every 100 commits (keeping the last
100 and each watermark key's newest carrier). Prints the latency of the first and last commits.

    python bench/bench_lake_commits.py --commits 1000
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
from moto.server import ThreadedMotoServer

from capture.config import LakeConfig
from capture.credentials import SecretRef
from capture.lake.tables import LakeTables, read_watermarks


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--expire-every", type=int, default=100)
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    creds = {"aws_access_key_id": "bench", "aws_secret_access_key": "bench"}
    s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", **creds)
    s3.create_bucket(Bucket="bench-lake")
    env = {"K": "bench", "S": "bench"}
    cfg = LakeConfig(
        host_id="bench", bucket="bench-lake", endpoint=url,
        access_key_id=SecretRef(env="K"), secret_access_key=SecretRef(env="S"),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tables = LakeTables(cfg, root, env)
        rows = 1000
        latencies: list[float] = []
        for i in range(args.commits):
            seq0 = i * rows
            table = pa.table(
                {
                    "_recv_time": pa.array(
                        [1_796_000_000_000_000 + seq0 + j for j in range(rows)],
                        pa.timestamp("us", tz="UTC"),
                    ),
                    "_stripe": pa.array(["A"] * rows).dictionary_encode(),
                    "_seq": pa.array(range(seq0, seq0 + rows), pa.int64()),
                    "bidPrice": pa.array([1.5] * rows),
                }
            )
            path = root / "f.parquet"
            pq.write_table(table, path)
            key = f"data/bench/A/{seq0:020d}.parquet"
            s3.upload_file(str(path), "bench-lake", key)
            start = time.perf_counter()
            tables.commit("bench", table.schema, [f"s3://bench-lake/{key}"], {"A": seq0 + rows - 1})
            latencies.append(time.perf_counter() - start)
            if args.expire_every and (i + 1) % args.expire_every == 0:
                tables.expire("bench", int(time.time() * 1000))
        tbl = tables.catalog().load_table(("mlink", "bench"))
        n = len(latencies)
        first, last = latencies[:50], latencies[-50:]
        print(f"commits: {n}, rows in table: {tbl.scan().to_arrow().num_rows}")
        print(f"first 50: median {statistics.median(first) * 1e3:.0f} ms, "
              f"max {max(first) * 1e3:.0f} ms")  # fmt: skip
        print(f"last 50:  median {statistics.median(last) * 1e3:.0f} ms, "
              f"max {max(last) * 1e3:.0f} ms")  # fmt: skip
        manifests = tbl.current_snapshot().manifests(tbl.io)
        print(f"snapshots kept: {len(tbl.snapshots())}, manifests in current: {len(manifests)}")
        print(f"watermark: {read_watermarks(tbl, 'bench', ['A'])}")
    server.stop()


if __name__ == "__main__":
    main()
