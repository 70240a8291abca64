"""A local MLink server that behaves like PROTOCOL.md says the real one does.

It is the product's embedded demo source, the counterpart of every daemon test, and the
reference for what the daemon must survive (faults).  Entry points:

* :func:`serve` — ``await nursery.start(serve, SimConfig(...))`` returns the bound port;
* :func:`main` — the ``mlink-capture simulate`` command line.

The accepted API key is read from an environment variable (``--api-key-env``, default
``MLINK_API_KEY``) so it never appears on a command line; if the variable is unset or empty the
simulator accepts any bearer token.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import structlog
import trio

from capture.config import ConfigError
from capture.logs import configure, register_secret
from capture.sim.config import SimConfig
from capture.sim.faults import Faults
from capture.sim.record import load_sent_data, load_sent_frames, recorded_bytes
from capture.sim.server import Simulator, serve

__all__ = [
    "Faults",
    "SimConfig",
    "Simulator",
    "build_parser",
    "load_sent_data",
    "load_sent_frames",
    "main",
    "recorded_bytes",
    "serve",
]


def build_parser(prog: str = "mlink-capture simulate") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Run a local MLink JSONFramed server with simulated market data.",
        epilog="exit codes:\n  0  stopped (Ctrl-C)\n  1  cannot serve (e.g. the port is taken)\n"
        "  2  bad usage or configuration",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", type=Path, help="simulator TOML file (knobs and [faults])")
    p.add_argument("--host", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="TCP port (default 0: ephemeral, printed in the log)")
    p.add_argument(
        "--api-key-env",
        default="MLINK_API_KEY",
        metavar="NAME",
        help="environment variable holding the accepted API key (default MLINK_API_KEY); "
        "unset or empty: accept any key",
    )
    p.add_argument("--rate", type=float, help="live updates per second per message type")
    p.add_argument("--stripes", help="comma-separated stripe codes to populate (default: all)")
    p.add_argument("--types", help="comma-separated message types to generate")
    p.add_argument("--record-dir", type=Path, help="record every byte sent under this directory")
    p.add_argument("--tls-cert", type=Path, help="serve wss:// with this PEM certificate")
    p.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--heartbeat-interval", type=float, help="seconds between heartbeats")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> SimConfig:
    """The file (if any) with command-line overrides; raises ConfigError naming the bad knob."""
    env = os.environ if environ is None else environ
    cfg = SimConfig.from_toml(args.config) if args.config is not None else SimConfig()
    overrides: dict[str, Any] = {}
    for name in ("host", "port", "rate", "seed", "record_dir", "heartbeat_interval", "tls_cert",
                 "tls_key"):
        value = getattr(args, name)
        if value is not None:
            overrides[name] = value
    if args.stripes:
        overrides["stripes"] = tuple(s.strip() for s in args.stripes.split(",") if s.strip())
    if args.types:
        overrides["types"] = tuple(t.strip() for t in args.types.split(",") if t.strip())
    key = env.get(args.api_key_env, "")
    if key:
        register_secret(key)
        overrides["api_keys"] = frozenset({key})
    return cfg.with_overrides(**overrides) if overrides else cfg


def main(argv: list[str] | None = None) -> int:
    """``mlink-capture simulate``: run until interrupted.  Exit 2 on a configuration error."""
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"mlink-capture simulate: {exc}", file=sys.stderr)
        return 2
    configure(args.log_level)
    log = structlog.get_logger("capture.sim")
    if not cfg.api_keys:
        log.warning("sim.open_auth", detail=f"${args.api_key_env} is not set: any key is accepted")
    try:
        trio.run(serve, cfg)
    except KeyboardInterrupt:
        log.info("sim.stopped")
    except OSError as exc:  # e.g. the port is taken
        log.error("sim.failed", error=str(exc))
        return 1
    return 0
