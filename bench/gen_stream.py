#!/usr/bin/env python3
"""Pre-generate the benchmark's byte stream once: JSONFramed frames as the simulator sends them.

Usage::

    python bench/gen_stream.py [--messages 1000000] [--seed 7] [--out bench/data]

The simulator's market (``capture.sim.market.Market``, the same generator the demo and the tests
use) produces ``--messages`` data records, mostly OptionNbboQuote plus StockBookQuote,
OptionPrint and StockPrint (``TYPE_MIX``), each framed exactly like the simulator frames it
(``Connection.body`` header + ``encode_frame``).  Every record lies in exactly one of the 11
compound stripes of ``STRIPES``; the frames are written

* per stripe, in generation order, to ``<stripe>.jsonf`` (the 11-stripe run), and
* all together, in generation order, to ``all.jsonf`` (the 1-stripe run),

so both runs and every baseline get the same frames.  ``manifest.json`` holds the counts.  The
result is cached under ``--out/n<messages>-s<seed>``; a complete directory is reused.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capture.frames import encode_frame
from capture.sim.config import SimConfig
from capture.sim.market import Market, utc_text

STRIPES = ("A", "B", "C", "D", "E", "F", "G", "H", "M", "S", "X")
"""The compound stripes of config/capture.toml (the complete feed split 11 ways)."""
TYPE_MIX = {
    "OptionNbboQuote": 0.86,
    "StockBookQuote": 0.08,
    "OptionPrint": 0.04,
    "StockPrint": 0.02,
}
"""Share of each message type in the stream (an OPRA-heavy complete feed)."""
MANIFEST = "manifest.json"
FORMAT_VERSION = 1
DEFAULT_DIR = Path(__file__).resolve().parent / "data"


def dataset_dir(out: Path, messages: int, seed: int) -> Path:
    return out / f"n{messages}-s{seed}"


def load_manifest(directory: Path) -> dict[str, object] | None:
    try:
        doc = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return doc if doc.get("format") == FORMAT_VERSION else None


def header_json(cfg: SimConfig, mtyp: str, sid: int, seqn: int, stim_ns: int, now_ns: int) -> str:
    """The simulator's header (``capture.sim.server.Connection.body``), field for field."""
    return (
        f'{{"mTyp":"{mtyp}","sEnv0":"{cfg.env}","sRlm0":"{cfg.realm}",'
        f'"sID":{sid},"kLen":0,"mLen":0,"seqN":{seqn},"appN":"{cfg.app_name}",'
        f'"mn":"{cfg.machine}","sTim":"{utc_text(stim_ns)}",'
        f'"encT":"{utc_text(now_ns)}","git":"{cfg.git}"}}'
    )


def generate(out: Path, messages: int, seed: int, *, quiet: bool = False) -> Path:
    """Write the dataset (if not there yet) and return its directory."""
    directory = dataset_dir(out, messages, seed)
    if load_manifest(directory) is not None:
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST).unlink(missing_ok=True)
    cfg = SimConfig()
    start_ns = 1_764_000_000_000_000_000  # fixed: the bytes do not depend on the day
    market = Market(seed=seed, start_ns=start_ns, types=tuple(TYPE_MIX))
    rng = random.Random(seed)
    names = list(TYPE_MIX)
    weights = list(TYPE_MIX.values())
    files = {s: (directory / f"{s}.jsonf").open("wb") for s in STRIPES}
    everything = (directory / "all.jsonf").open("wb")
    per_type = dict.fromkeys(TYPE_MIX, 0)
    per_stripe = dict.fromkeys(STRIPES, 0)
    stripe_types: dict[str, dict[str, int]] = {s: {} for s in STRIPES}
    body_bytes = dict.fromkeys(TYPE_MIX, 0)
    wire = 0
    step_ns = 5_000  # a nominal 200k messages/s of market time
    t0 = time.perf_counter()
    made = 0
    while made < messages:
        mtyp = rng.choices(names, weights)[0]
        now = start_ns + made * step_ns
        rec = market.update(mtyp, now)
        if rec is None:  # pragma: no cover - every type of TYPE_MIX has keys
            continue
        stripe = next((s for s in STRIPES if s in rec.stripes), None)
        if stripe is None:
            continue  # in none of the 11 stripes: not part of the complete feed
        header = header_json(cfg, mtyp, rec.sid, rec.seqn, rec.sent_ns, now + 150_000)
        body = f'{{"header":{header},"message":{rec.message_json()}}}'.encode("ascii")
        frame = encode_frame(rec.mdef.number, body)
        files[stripe].write(frame)
        everything.write(frame)
        per_type[mtyp] += 1
        per_stripe[stripe] += 1
        stripe_types[stripe][mtyp] = stripe_types[stripe].get(mtyp, 0) + 1
        body_bytes[mtyp] += len(body)
        wire += len(frame)
        made += 1
        if not quiet and made % 100_000 == 0:
            rate = made / (time.perf_counter() - t0)
            print(f"  generated {made:,} / {messages:,} ({rate:,.0f}/s)", file=sys.stderr)
    for f in [*files.values(), everything]:
        f.close()
    manifest = {
        "format": FORMAT_VERSION,
        "messages": messages,
        "seed": seed,
        "wire_bytes": wire,
        "per_type": per_type,
        "per_stripe": per_stripe,
        "stripe_types": stripe_types,
        "mean_body_bytes": {t: round(body_bytes[t] / n, 1) for t, n in per_type.items() if n},
        "stripes": list(STRIPES),
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return directory


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    directory = generate(args.out, args.messages, args.seed)
    print(json.dumps(load_manifest(directory), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
