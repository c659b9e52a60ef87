"""ops/deploy: the systemd unit passes `systemd-analyze verify`, the production configuration
parses, and the unit, the configuration and the proxy agree with one another."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import load

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "ops" / "deploy"
UNIT = DEPLOY / "postback-ledger.service"
INSTALLED = "/opt/postback-ledger/venv/bin/postback-ledger"


def unit_lines() -> dict[str, list[str]]:
    """The unit's settings, each key with every value it is given."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed on this machine")
    # verify checks that every command exists: point them at this checkout's console script.
    script = Path(sys.executable).with_name("postback-ledger")
    if not script.exists():
        pytest.skip(f"no console script {script} (pip install -e . makes it)")
    rendered = tmp_path / UNIT.name
    rendered.write_text(UNIT.read_text().replace(INSTALLED, str(script)))
    done = subprocess.run(
        [analyze, "verify", str(rendered)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 and "Failed to" in done.stderr and "bus" in done.stderr.lower():
        pytest.skip(f"systemd-analyze cannot run here: {done.stderr.strip()}")
    # Unknown keys and bad values are only warnings: any output at all fails the test.
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_the_unit_migrates_before_serving_and_stops_after_the_shutdown_timeout() -> None:
    unit = unit_lines()
    (pre,) = unit["ExecStartPre"]
    (start,) = unit["ExecStart"]
    assert pre.split()[:2] == [INSTALLED, "migrate"]
    assert start.split()[:2] == [INSTALLED, "serve"]
    assert re.search(r"--workers \d+ --config /etc/postback-ledger/ledger.toml$", start)
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Type"] in (["exec"], ["simple"])
    assert unit["KillSignal"] == ["SIGTERM"]
    assert int(unit["TimeoutStopSec"][0]) > 10  # server.shutdown_timeout's default
    assert unit["NoNewPrivileges"] == ["yes"] and unit["ProtectSystem"] == ["strict"]
    assert unit["EnvironmentFile"] == ["/etc/postback-ledger/ledger.env"]


def test_the_production_config_parses_with_the_variables_it_names() -> None:
    text = (DEPLOY / "ledger.toml").read_text()
    names = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", text))
    example = (DEPLOY / "ledger.env.example").read_text()
    documented = set(re.findall(r"^([A-Z_][A-Z0-9_]*)=", example, re.MULTILINE))
    assert names == documented  # ledger.env.example lists exactly what the config reads
    environ = {
        name: f"{name.lower().replace('_', '-')}-0123456789abcdefghijklmnop" for name in names
    }
    environ["DATABASE_URL"] = "postgresql://ledger_app@db.internal/ledger"
    environ["DATABASE_OWNER_URL"] = "postgresql://ledger_owner@db.internal/ledger"
    settings = load(DEPLOY / "ledger.toml", environ)
    assert settings.server.internal is not None
    assert settings.server.internal.port != settings.server.port
    assert settings.server.trusted_proxies and settings.server.public_url.startswith("https://")
    assert settings.database.owner_url != settings.database.url
    assert len(settings.chain_key()) >= 32
    # The proxy forwards to the walls' listener, and only there.
    nginx = (DEPLOY / "nginx.conf").read_text()
    assert f"server {settings.server.host}:{settings.server.port};" in nginx
    assert str(settings.server.internal.port) not in nginx
    assert "proxy_set_header X-Forwarded-For $remote_addr;" in nginx
