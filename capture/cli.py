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
from typing import Any

from capture import __version__

EXIT_USAGE = 2
HEALTH_FILE_ENV = "MLINK_CAPTURE_HEALTH_FILE"  # the image sets it: `docker exec C ... status`


def _command(
    sub: Any, name: str, summary: str, description: str, exits: str
) -> argparse.ArgumentParser:
    """A subcommand whose ``--help`` says what it does and what its exit codes mean."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=summary,
        description=description,
        epilog="exit codes:\n" + exits,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    return parser


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mlink-capture",
        description="Record SpiderRock MLink JSONFramed streams into partitioned Parquet.",
        epilog="Run 'mlink-capture COMMAND --help' for a command's options and exit codes.",
    )
    p.add_argument(
        "-V", "--version", action="version", version=f"mlink-capture {__version__}"
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = _command(
        sub, "run", "run the capture daemon",
        "Run the capture daemon: one WebSocket per stripe, Parquet under output.root, the "
        "journal, the health file, sd_notify. SIGTERM/SIGINT stop it gracefully, SIGHUP "
        "commits every open file and retries stripes whose credentials were refused.",
        "  0  stopped on request\n  1  every stripe failed for good\n"
        "  2  bad usage or configuration",
    )  # fmt: skip
    run.add_argument("--config", "-c", required=True, type=Path, help="TOML configuration file")
    # Set by the parent process for a stripe group's child (capture.groups): I/N:STRIPES.
    run.add_argument("--group", help=argparse.SUPPRESS)

    chk = _command(
        sub, "check-config", "validate a configuration file and exit",
        "Read a configuration file and report every problem with the key that has it "
        "(also: are output.root, journal.directory and the health file's directory writable "
        "here). Nothing is started.",
        "  0  the configuration is valid\n  2  it has problems (each printed), or bad usage",
    )  # fmt: skip
    chk.add_argument("file", nargs="?", type=Path, metavar="FILE", help="same as --config")
    chk.add_argument("--config", "-c", type=Path, help="TOML configuration file")

    h = _command(
        sub, "health", "exit 0 if the daemon's health file says healthy",
        "Read the daemon's health file and print one line: for container health checks and "
        "monitoring scripts.",
        "  0  healthy: the file is fresh and every stripe streaming or quiet\n"
        "  1  unhealthy, or the file is older than --max-age (daemon stuck or gone)\n"
        "  2  unknown: no health file, unreadable, or bad usage",
    )  # fmt: skip
    h.add_argument("--config", "-c", type=Path, help="read health.path from this config")
    h.add_argument(
        "--file", type=Path, help=f"health file (instead of --config; default ${HEALTH_FILE_ENV})"
    )
    h.add_argument("--max-age", type=float, default=30.0, help="seconds (default 30)")
    h.add_argument(
        "--require-data",
        action="store_true",
        help="treat quiet stripes (heartbeats only) as unhealthy",
    )

    st = _command(
        sub, "status", "a live table of the daemon's stripes, from its health file",
        "Show every stripe of a running daemon: state, messages per second, age of the last "
        "data, rows written, files, quarantined frames, journal lag. Read from the health file "
        "(works beside the daemon or in its container: docker exec C mlink-capture status). On "
        "a terminal it redraws in place until Ctrl-C; --once or a pipe prints once (after a "
        "second report, for the rates).",
        "  0  healthy (live view: always, on Ctrl-C)\n"
        "  1  unhealthy, or no new report within --max-age (daemon stuck or gone)\n"
        "  2  no readable health file, or bad usage",
    )  # fmt: skip
    st.add_argument("--config", "-c", type=Path, help="read health.path from this config")
    st.add_argument(
        "--file", type=Path, help=f"health file (instead of --config; default ${HEALTH_FILE_ENV})"
    )
    st.add_argument("--once", action="store_true", help="print once and exit")
    st.add_argument("--json", action="store_true", help="print one JSON document and exit")
    st.add_argument("--interval", type=float, default=1.0, help="redraw every S seconds (1)")
    st.add_argument("--max-age", type=float, default=30.0, help="stale after S seconds (30)")

    demo = _command(
        sub, "demo", "run the simulator and the daemon, then show what was captured",
        "Run the MLink simulator and the daemon in one process for a while (a progress line "
        "meanwhile, their logs in a file), then print rows per type and stripe, the files and "
        "a few rows read back.",
        "  0  captured and shown\n  1  the capture failed\n  2  bad usage or configuration",
    )  # fmt: skip
    demo.add_argument("--config", "-c", type=Path, help="demo configuration (default: built in)")
    demo.add_argument("--seconds", type=float, default=None, help="capture duration (default 20)")
    demo.add_argument("--root", type=Path, help="output directory (overrides the config)")
    demo.add_argument(
        "--lake", action="store_true", help="also S3 (moto on loopback) + Iceberg (SQLite)"
    )

    ver = _command(
        sub, "verify", "check a capture tree; exit 1 if anything is wrong",
        "Open every Parquet file under a data root, count rows per table, date and stripe, "
        "check footers, duplicate sequence ranges, unfinished files and the journal's "
        "accounting.",
        "  0  no problem found\n  1  a problem was found (each printed)\n  2  bad usage",
    )  # fmt: skip
    ver.add_argument("root", nargs="?", type=Path, help="data root (default: the config's)")
    ver.add_argument("--config", "-c", type=Path, help="read output.root from this config")
    ver.add_argument("--deep", action="store_true", help="decode every page, not just footers")
    ver.add_argument("--json", action="store_true", help="machine-readable report")
    ver.add_argument(
        "--lake", action="store_true", help="also the Iceberg tables ([lake] of --config)"
    )

    rep = _command(
        sub, "replay", "rebuild Parquet from the journal into another root",
        "Rebuild Parquet from the journal's segments (live and archived) into another root: "
        "the same rows as the live run wrote.",
        "  0  replayed\n  2  bad usage or configuration, or nothing to replay",
    )  # fmt: skip
    rep.add_argument("--config", "-c", type=Path, required=True, help="the daemon's config")
    rep.add_argument("--to", type=Path, required=True, help="output root for the rebuilt data")
    rep.add_argument("--stripe", action="append", help="only this stripe (repeatable)")

    cmp = sub.add_parser(
        "compact",
        help="compact closed partitions, merge A/B captures, apply retention",
        description="Rewrite closed partitions into large sorted files (swapped in atomically), "
        "merge other hosts' captures ([compaction] peers), then remove partitions past "
        "[retention].  Exit codes: 0 done or nothing to do; 1 a partition failed (the rest "
        "done, rerun retries); 2 bad usage or configuration; 3 the file system cannot exchange "
        "directories atomically (nothing changed); 75 another compaction is running.",
    )
    cmp.add_argument("--config", "-c", type=Path, required=True, help="the daemon's config")
    cmp.add_argument("--dry-run", action="store_true", help="print what would be done, do nothing")
    cmp.add_argument("--table", action="append", help="only this message type (repeatable)")
    cmp.add_argument(
        "--date", action="append", type=_iso_date, help="only this date, YYYY-MM-DD (repeatable)"
    )
    cmp.add_argument(
        "--every", type=float, metavar="SECONDS",
        help="run again every SECONDS until SIGTERM (the compose service; systemd uses a timer)",
    )  # fmt: skip

    sim = sub.add_parser(
        "simulate", help="run the MLink simulator ('simulate --help' for its options)",
        add_help=False,
    )  # fmt: skip
    sim.add_argument("args", nargs=argparse.REMAINDER)
    return p


def _iso_date(text: str) -> object:
    import datetime as dt

    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date (YYYY-MM-DD): {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    args_list = sys.argv[1:] if argv is None else argv
    if args_list[:1] == ["simulate"]:
        from capture.sim import main as sim_main

        return sim_main(args_list[1:])
    args = _parser().parse_args(args_list)
    if args.command == "run":
        return _run(args.config, args.group)
    if args.command == "check-config":
        return _check_config(args)
    if args.command == "health":
        return _health(args)
    if args.command == "status":
        return _status(args)
    if args.command == "replay":
        return _replay(args)
    if args.command == "verify":
        return _verify(args)
    if args.command == "compact":
        return _compact(args)
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


def _check_config(args: argparse.Namespace) -> int:
    if (args.file is None) == (args.config is None):
        print("mlink-capture check-config: give the file once: --config FILE (or FILE)",
              file=sys.stderr)  # fmt: skip
        return EXIT_USAGE
    path: Path = args.config or args.file
    cfg = _load(path, check_paths=True)
    if cfg is None:
        return EXIT_USAGE
    print(f"{path}: OK")
    return 0


def _apply_settings(cfg: Any) -> None:
    """Logging as ``[logging]`` says (capture.logs), and the permissions of what the process
    creates (``output.file_mode``/``dir_mode``, as its umask): every command that writes calls
    this first."""
    from capture import logs

    os.umask(cfg.output.umask)
    lg = cfg.logging
    logs.configure(lg.level, lg.format, priority_prefix=lg.priority_prefix)


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
    import signal

    # Until the event loop's handler is installed, SIGHUP (rotate, reload) must not kill a
    # starting daemon (its default action); there is nothing to rotate yet.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    _prepare_process()
    import trio

    from capture import groups
    from capture.config import Config, group_count

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        print(f"mlink-capture: cannot read {path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_USAGE
    cfg = _load(path, text=text)
    if not isinstance(cfg, Config):
        return EXIT_USAGE
    _apply_settings(cfg)
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
                preload=_preload_groups,
            )
        return trio.run(groups.Parent(cfg, path, text, forkserver=server).run)
    from capture.app import Daemon

    return trio.run(Daemon(cfg).run)


def _preload_groups() -> None:
    """Import and build, in the process that forks the stripe groups (capture.forkserver),
    what every group uses: shared with them all afterwards."""
    import gc

    import capture.app  # noqa: F401 - the daemon: pyarrow, the sink, the decoder, trio-websocket
    from capture import schemas

    schemas.registry()
    # Objects created so far live as long as the process: the collector of a forked group must
    # not walk them (and so write to their pages, un-sharing them).
    gc.freeze()


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

    from capture import groups
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
    _apply_settings(cfg)
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

    from capture.config import Config
    from capture.replay import ReplayError, plan, replay

    cfg = _load(args.config)
    if not isinstance(cfg, Config):
        return EXIT_USAGE
    _apply_settings(cfg)
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


def _compact(args: argparse.Namespace) -> int:
    from capture import housekeeping, logs
    from capture.config import Config

    cfg = _load(args.config)
    if not isinstance(cfg, Config):
        return EXIT_USAGE
    if args.every is not None and args.every <= 0:
        print("mlink-capture compact: --every must be > 0", file=sys.stderr)
        return EXIT_USAGE
    tables = None
    if args.table:
        from capture.events import TABLE as EVENTS_TABLE
        from capture.schemas import lookup

        tables = []
        for name in args.table:
            found = lookup(name)
            if found is None and name != EVENTS_TABLE:
                print(f"mlink-capture compact: --table {name!r}: not an MLink message type",
                      file=sys.stderr)  # fmt: skip
                return EXIT_USAGE
            tables.append(found.name if found is not None else name)
    logs.configure(cfg.logging.level, cfg.logging.format)
    return housekeeping.main(
        cfg, tables=tables, dates=args.date, dry_run=args.dry_run, every=args.every
    )


def _health_path(args: argparse.Namespace) -> Path | None:
    """--file, or the health.path of --config, or $MLINK_CAPTURE_HEALTH_FILE; None after
    saying why there is none."""
    from capture.config import Config

    path: Path | None = args.file
    if path is None and args.config is not None:
        cfg = _load(args.config)
        if not isinstance(cfg, Config):
            return None
        path = cfg.health.path
    if path is None and os.environ.get(HEALTH_FILE_ENV):
        path = Path(os.environ[HEALTH_FILE_ENV])
    if path is None:
        print(
            f"mlink-capture {args.command}: give --file or a --config with health.path "
            f"(or set {HEALTH_FILE_ENV})",
            file=sys.stderr,
        )
    return path


def _status(args: argparse.Namespace) -> int:
    import shutil

    from capture import status

    path = _health_path(args)
    if path is None:
        return EXIT_USAGE
    if args.interval <= 0 or args.max_age <= 0:
        print("mlink-capture status: --interval and --max-age must be > 0", file=sys.stderr)
        return EXIT_USAGE
    if args.once or args.json or not sys.stdout.isatty():
        return status.once(path, json_out=args.json, max_age_s=args.max_age, out=sys.stdout)
    return status.live(
        path,
        refresh_s=args.interval,
        out=sys.stdout,
        width=lambda: shutil.get_terminal_size().columns,
    )


def _health(args: argparse.Namespace) -> int:
    from capture import health

    path = _health_path(args)
    if path is None:
        return EXIT_USAGE
    from capture.status import printable

    code, line = health.check(
        path, max_age_s=args.max_age, now_ns=time.time_ns(), require_data=args.require_data
    )
    print(printable(line))  # states and the summary are strings from a file
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
