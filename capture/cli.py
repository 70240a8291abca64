"""``mlink-capture`` command line: argument parsing and exit codes only.

Exit codes: 0 success; 1 the daemon stopped because every stripe failed, or ``health`` found the
daemon unhealthy; 2 bad usage or configuration (or ``health`` cannot tell).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from pathlib import Path

from capture import __version__

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlink-capture",
        description="Record SpiderRock MLink JSONFramed streams into partitioned Parquet.",
    )
    p.add_argument("--version", action="version", version=f"mlink-capture {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run the capture daemon")
    run.add_argument("--config", "-c", required=True, type=Path, help="TOML configuration file")
    # Set by the parent process for a stripe group's child (capture.groups): I/N:STRIPES.
    run.add_argument("--group", help=argparse.SUPPRESS)

    chk = sub.add_parser("check-config", help="validate a configuration file and exit")
    chk.add_argument("config", type=Path)

    h = sub.add_parser("health", help="exit 0 if the daemon's health file says healthy")
    h.add_argument("--config", "-c", type=Path, help="read health.path from this config")
    h.add_argument("--file", type=Path, help="health file (instead of --config)")
    h.add_argument("--max-age", type=float, default=30.0, help="seconds (default 30)")
    h.add_argument(
        "--require-data",
        action="store_true",
        help="treat quiet stripes (heartbeats only) as unhealthy",
    )

    demo = sub.add_parser(
        "demo", help="run the simulator and the daemon, then show what was captured"
    )
    demo.add_argument("--config", "-c", type=Path, help="demo configuration (default: built in)")
    demo.add_argument("--seconds", type=float, default=20.0, help="capture duration (default 20)")
    demo.add_argument("--root", type=Path, help="output directory (overrides the config)")
    demo.add_argument(
        "--lake", action="store_true", help="also S3 (moto on loopback) + Iceberg (SQLite)"
    )

    ver = sub.add_parser("verify", help="check a capture tree; exit 1 if anything is wrong")
    ver.add_argument("root", nargs="?", type=Path, help="data root (default: the config's)")
    ver.add_argument("--config", "-c", type=Path, help="read output.root from this config")
    ver.add_argument("--deep", action="store_true", help="decode every page, not just footers")
    ver.add_argument("--json", action="store_true", help="machine-readable report")
    ver.add_argument(
        "--lake", action="store_true", help="also the Iceberg tables ([lake] of --config)"
    )

    rep = sub.add_parser("replay", help="rebuild Parquet from the journal into another root")
    rep.add_argument("--config", "-c", type=Path, required=True, help="the daemon's config")
    rep.add_argument("--to", type=Path, required=True, help="output root for the rebuilt data")
    rep.add_argument("--stripe", action="append", help="only this stripe (repeatable)")

    sim = sub.add_parser("simulate", help="run the MLink simulator", add_help=False)
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return p


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["simulate"]:
        from capture.sim import main as sim_main

        return sim_main(args_list[1:])
    args = _parser().parse_args(args_list)
    if args.command == "run":
        return _run(args.config, args.group)
    if args.command == "check-config":
        return _check_config(args.config)
    if args.command == "health":
        return _health(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "demo":
        from capture.demo import main as demo_main

        return demo_main(
            config=args.config, seconds=args.seconds, root=args.root, lake=args.lake
        )
    raise AssertionError(args.command)  # pragma: no cover - argparse enforces the choices


def _load(path: Path, *, check_paths: bool = False, text: str | None = None) -> object:
    """The configuration at ``path`` (or ``text``, as if read from there), or None after
    printing every problem."""
    from capture.config import Config, ConfigError

    try:
        if text is not None:
            return Config.from_toml_text(text, path, check_paths=check_paths)
        return Config.from_toml(path, check_paths=check_paths)
    except ConfigError as exc:
        print(
            f"mlink-capture: configuration {path} has {len(exc.problems)} problem(s):",
            file=sys.stderr,
        )
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return None


def _check_config(path: Path) -> int:
    cfg = _load(path, check_paths=True)
    if cfg is None:
        return EXIT_USAGE
    print(f"{path}: OK")
    return 0


# At full rate the event-loop thread holds the GIL almost all the time.  A decode/encode thread
# takes the GIL back after each pyarrow call (which runs with it released) and has to wait until
# the loop lets go, which CPython forces only every switch interval: 5 ms by default.  With
# dozens of such hand-backs per batch the writers fall behind while a core idles.  0.5 ms:
# measured in bench/README.md ("Where the time goes").
GIL_SWITCH_INTERVAL_S = 0.0005


def _prepare_process() -> None:
    """What every daemon process sets first: its allocators (before pyarrow is imported) and
    the GIL hand-off interval."""
    from capture.memory import choose_allocators

    choose_allocators()
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def _run(path: Path, group: str | None = None) -> int:
    if group is not None:
        return _run_group(path, group)
    _prepare_process()
    import trio

    from capture import groups, logs
    from capture.config import Config, group_count

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"mlink-capture: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    cfg = _load(path, text=text)
    if not isinstance(cfg, Config):
        return EXIT_USAGE
    logs.configure(cfg.logging.level, cfg.logging.format)
    if group_count(cfg.supervision.processes, len(cfg.source.stripes)) > 1:
        # The parent of the stripe-group processes: it captures nothing and hands each group
        # the configuration it just read (capture.groups).  The groups are forked from a server
        # forked from here, now, before any event loop or thread exists (capture.forkserver).
        server = None
        if cfg.supervision.fork_server:
            from capture import forkserver

            server = forkserver.ForkServer.start(
                functools.partial(_run_group, path),
                groups.child_environment(os.environ),
                preload=forkserver.preload,
            )
        return trio.run(groups.Parent(cfg, path, text, forkserver=server).run)
    from capture.app import Daemon

    return trio.run(Daemon(cfg).run)


def _run_group(path: Path, group: str) -> int:
    """A stripe group's process, started by the daemon (capture.groups), exec'd or forked by
    the fork server: its configuration comes on stdin, its exit status tells the daemon whether
    to restart it."""
    import signal

    # Until the daemon's handler is installed, SIGHUP (rotate) must not kill a starting group.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _prepare_process()
    import structlog
    import trio

    from capture import groups, logs
    from capture.config import Config

    try:
        spec = groups.GroupSpec.parse(group)
        text = groups.read_config_message()
    except (OSError, ValueError) as exc:
        print(f"mlink-capture run --group: {exc}", file=sys.stderr)
        return groups.CHILD_BAD_CONFIG
    cfg = _load(path, text=text)
    if not isinstance(cfg, Config):
        return groups.CHILD_BAD_CONFIG
    logs.configure(cfg.logging.level, cfg.logging.format)
    try:
        cfg = groups.child_config(cfg, spec)
    except ValueError as exc:
        print(f"mlink-capture run --group: {exc}", file=sys.stderr)
        return groups.CHILD_BAD_CONFIG
    structlog.contextvars.bind_contextvars(group=spec.index)
    from capture.app import Daemon

    return trio.run(groups.run_child, Daemon(cfg, processes=spec.count))


def _replay(args: argparse.Namespace) -> int:
    import trio

    from capture import logs
    from capture.config import Config
    from capture.replay import ReplayError, plan, replay

    cfg = _load(args.config)
    if not isinstance(cfg, Config):
        return EXIT_USAGE
    logs.configure(cfg.logging.level, cfg.logging.format)
    try:
        journals = plan(cfg, args.to, args.stripe)
    except ReplayError as exc:
        print(f"mlink-capture replay: {exc}", file=sys.stderr)
        return EXIT_USAGE
    done = trio.run(replay, cfg, args.to, journals)
    for stripe, frames in done.items():
        print(f"stripe {stripe}: {frames} frames -> {args.to}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from capture import verify
    from capture.config import Config

    root: Path | None = args.root
    journal_root = None
    if args.config is not None:
        cfg = _load(args.config)
        if not isinstance(cfg, Config):
            return EXIT_USAGE
        root = root or cfg.output.root
        journal_root = cfg.journal.directory
    if root is None:
        print("mlink-capture verify: give ROOT or --config", file=sys.stderr)
        return EXIT_USAGE
    code = verify.main(root, deep=args.deep, as_json=args.json, journal_root=journal_root)
    if args.lake:
        code = max(code, _verify_lake(cfg if args.config is not None else None))
    return code


def _verify_lake(cfg: object) -> int:
    from capture.config import Config

    if not isinstance(cfg, Config) or cfg.lake is None:
        print("mlink-capture verify --lake: needs --config with a [lake] section", file=sys.stderr)
        return EXIT_USAGE
    from capture.lake.tables import CatalogError
    from capture.lake.verify import verify_lake

    try:
        report = verify_lake(cfg)
    except CatalogError as exc:
        print(f"lake: {exc}", file=sys.stderr)
        return 1
    for problem in report.problems:
        print(f"lake problem: {problem}")
    print(
        f"lake: {report.tables} tables, {report.data_files} data files, "
        f"{report.pending_local} local files not committed yet, {len(report.problems)} problems"
    )
    return 1 if report.problems else 0


def _health(args: argparse.Namespace) -> int:
    from capture import health
    from capture.config import Config

    path: Path | None = args.file
    if path is None and args.config is not None:
        cfg = _load(args.config)
        if not isinstance(cfg, Config):
            return EXIT_USAGE
        path = cfg.health.path
    if path is None:
        print("mlink-capture health: give --file or a --config with health.path", file=sys.stderr)
        return EXIT_USAGE
    code, line = health.check(
        path, max_age_s=args.max_age, now_ns=time.time_ns(), require_data=args.require_data
    )
    print(line)
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
