"""The alert rules in ops/prometheus/: promtool's checks and unit tests, and a real Prometheus
that scrapes a running service and sees LedgerSignatureFailuresHigh go pending.

The promtool and Prometheus tests need Debian's `prometheus` package (/usr/bin/prometheus,
/usr/bin/promtool); .ci/run installs it, elsewhere they are skipped and say so."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import subprocess
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from service.app import create_app
from service.settings import Settings
from tests.helpers import medioot, unique
from tests.unit.test_dashboard import exported_names, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "ops" / "prometheus"
ALERTS = RULES_DIR / "alerts.yml"
ALERTS_TEST = RULES_DIR / "alerts_test.yml"
EXAMPLE_CONFIG = RULES_DIR / "prometheus.yml"

REQUIRED_ALERTS = {
    "LedgerSignatureFailuresHigh",
    "LedgerPostbacksStopped",
    "LedgerDatabaseUnavailable",
    "LedgerOverloaded",
    "LedgerTargetDown",
}
# Alerts about one provider carry its name; the others are about the process or the target.
PER_PROVIDER = {"LedgerSignatureFailuresHigh", "LedgerPostbacksStopped"}

INSTALL_HINT = "Debian: apt-get install prometheus; .ci/run installs it"
needs_promtool = pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason=f"promtool not installed: alert rule checks and unit tests skipped ({INSTALL_HINT})",
)
# skipif, not a skip inside the test: it is decided before the module's database is created.
needs_prometheus = pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason=f"prometheus not installed: real-Prometheus alerting test skipped ({INSTALL_HINT})",
)

# `pytest -q` counts skips without their reasons; a warning is always shown in the summary.
_MISSING = [tool for tool in ("promtool", "prometheus") if shutil.which(tool) is None]
if _MISSING:
    warnings.warn(
        f"{' and '.join(_MISSING)} not installed: the Prometheus alerting tests are skipped "
        f"({INSTALL_HINT})",
        stacklevel=1,
    )

T = TypeVar("T")


# -- the rule files, read as text (no YAML library is a dependency) ---------------------------


def rule_blocks() -> list[tuple[str, str]]:
    """(alert name, its rule text) for every rule of alerts.yml."""
    text = ALERTS.read_text()
    starts = list(re.finditer(r"^\s*- alert: (\w+)\s*$", text, re.MULTILINE))
    ends = [m.start() for m in starts[1:]] + [len(text)]
    return [(m.group(1), text[m.start() : end]) for m, end in zip(starts, ends, strict=True)]


def rule_expr(block: str) -> str:
    match = re.search(r"^(\s*)expr: \|\n((?:\1\s+.*\n)+)", block, re.MULTILINE)
    assert match, block
    return match.group(2)


def unit_test_cases() -> list[tuple[str, bool]]:
    """(alert name, expects it firing) for every alert_rule_test case of alerts_test.yml."""
    text = ALERTS_TEST.read_text()
    cases = []
    for case in re.split(r"^\s*- eval_time: ", text, flags=re.MULTILINE)[1:]:
        name = re.search(r"^\s*alertname: (\w+)", case, re.MULTILINE)
        quiet = re.search(r"^\s*exp_alerts: \[\]", case, re.MULTILINE)
        firing = re.search(r"^\s*- exp_labels:", case, re.MULTILINE)
        assert name and (quiet or firing), case
        cases.append((name.group(1), firing is not None))
    return cases


def test_required_alerts_exist_with_annotations_and_labels() -> None:
    blocks = rule_blocks()
    assert {name for name, _ in blocks} >= REQUIRED_ALERTS
    for name, block in blocks:
        assert re.search(r"^\s+severity: (warning|critical)$", block, re.MULTILINE), name
        assert re.search(r"^\s+summary: ", block, re.MULTILINE), name
        assert re.search(r"^\s+description: ", block, re.MULTILINE), name
        assert f"ops/RUNBOOK.md#{name.lower()}" in block, f"{name}: no runbook link"
        if name in PER_PROVIDER:
            assert "by (provider)" in rule_expr(block), f"{name}: not labelled with provider"


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    cases = unit_test_cases()
    for name in {name for name, _ in rule_blocks()}:
        assert (name, True) in cases, f"{name}: no promtool case where it fires"
        assert (name, False) in cases, f"{name}: no promtool case where it must not fire"


def test_every_alert_runbook_section_exists() -> None:
    runbook = (ROOT / "ops" / "RUNBOOK.md").read_text()
    for name in {name for name, _ in rule_blocks()}:
        assert re.search(rf"^## {name}$", runbook, re.MULTILINE), f"RUNBOOK.md: no ## {name}"


def test_every_metric_in_the_rules_exists() -> None:
    """promtool's tests feed the rules the series they name, so a misspelt metric would pass
    them; the service's own exposition would not."""
    known = exported_names()
    for name, block in rule_blocks():
        used = metric_names(rule_expr(block))
        assert used, name
        assert used <= known, f"{name}: {sorted(used - known)} not exported by the service"


# -- promtool ----------------------------------------------------------------------------------


def promtool(*args: str) -> None:
    result = subprocess.run(
        ["promtool", *args],
        cwd=RULES_DIR,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"promtool {' '.join(args)}:\n{result.stdout}{result.stderr}"


@needs_promtool
def test_promtool_check_rules() -> None:
    promtool("check", "rules", ALERTS.name)


@needs_promtool
def test_promtool_unit_tests_pass() -> None:
    promtool("test", "rules", ALERTS_TEST.name)


@needs_promtool
def test_promtool_check_example_config() -> None:
    # Also loads and checks the rule file the example refers to.
    promtool("check", "config", EXAMPLE_CONFIG.name)


# -- a real Prometheus -------------------------------------------------------------------------

JOB = "postback-ledger"  # the job name LedgerTargetDown expects, as in prometheus.yml
START_TIMEOUT = 30.0
ALERT_TIMEOUT = 60.0
POLL = 0.25


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Prometheus:
    """/usr/bin/prometheus on a free port with its own configuration and data folder."""

    def __init__(self, folder: Path, target: str) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = folder / "prometheus.log"
        # The real rules, unchanged: a rule is pending as soon as its expression holds, so
        # 1 s scrapes and evaluations show it within seconds whatever its `for:`.
        shutil.copy(ALERTS, folder / "alerts.yml")
        self.config = folder / "prometheus.yml"  # YAML; JSON strings are YAML strings
        self.config.write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "  evaluation_interval: 1s\n"
            "rule_files:\n"
            f"  - {json.dumps(str(folder / 'alerts.yml'))}\n"
            "scrape_configs:\n"
            f"  - job_name: {JOB}\n"
            "    static_configs:\n"
            f"      - targets: [{json.dumps(target)}]\n"
        )
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("wb") as log:
            self.process = await asyncio.create_subprocess_exec(
                shutil.which("prometheus") or "prometheus",
                f"--config.file={self.config}",
                f"--storage.tsdb.path={self.folder / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 15)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def diagnostics(self) -> str:
        return f"prometheus log:\n{self.log.read_text(errors='replace')[-4000:]}"

    async def until(self, what: str, within: float, probe: Callable[[], Awaitable[T | None]]) -> T:
        """Poll `probe` until it returns something, Prometheus dies, or `within` s pass."""
        try:
            async with asyncio.timeout(within):
                while True:
                    assert self.process is not None
                    if self.process.returncode is not None:
                        pytest.fail(
                            f"prometheus exited ({self.process.returncode})\n{self.diagnostics()}"
                        )
                    result = await probe()
                    if result is not None:
                        return result
                    await asyncio.sleep(POLL)
        except TimeoutError:
            pytest.fail(f"no {what} within {within:.0f} s\n{self.diagnostics()}")


async def get_json(session: aiohttp.ClientSession, url: str, **params: str) -> Any:
    try:
        async with session.get(url, params=params) as resp:
            if resp.status != 200:
                return None
            return await resp.json()
    except aiohttp.ClientError:
        return None  # not listening yet


@pytest.fixture
async def prometheus_for(
    tmp_path: Path,
) -> AsyncIterator[Callable[[str], Awaitable[Prometheus]]]:
    started: list[Prometheus] = []

    async def start(target: str) -> Prometheus:
        prometheus = Prometheus(tmp_path, target)
        started.append(prometheus)
        await prometheus.start()
        return prometheus

    try:
        yield start
    finally:
        for prometheus in started:
            await prometheus.stop()


@needs_prometheus
async def test_real_prometheus_sees_signature_failures(
    aiohttp_server: Any,
    settings: Settings,
    prometheus_for: Callable[[str], Awaitable[Prometheus]],
) -> None:
    server = await aiohttp_server(create_app(settings), host="127.0.0.1")
    target = f"127.0.0.1:{server.port}"
    prometheus = await prometheus_for(target)
    api = prometheus.url + "/api/v1"

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as session:

        async def target_up() -> bool | None:
            body = await get_json(session, f"{api}/query", query=f'up{{job="{JOB}"}} == 1')
            return True if body and body["data"]["result"] else None

        async def rules_loaded() -> bool | None:
            body = await get_json(session, f"{api}/rules", type="alert")
            if not body:
                return None
            rules = [r for g in body["data"]["groups"] for r in g["rules"]]
            names = {r["name"] for r in rules}
            assert all(r["health"] != "err" for r in rules), rules
            return True if names >= REQUIRED_ALERTS else None

        # Scraped at least once before the burst, so that the counters' rise is seen.
        await prometheus.until("scrape of the service", START_TIMEOUT, target_up)
        await prometheus.until("alert rules", START_TIMEOUT, rules_loaded)

        # A burst of badly signed postbacks over about 3 seconds: 40 refusals, well above
        # the rule's floor of 0.02/s over 5 minutes (6 failures) and 100 % of the traffic.
        for _ in range(4):
            answers = await asyncio.gather(
                *(
                    session.get(
                        f"http://{target}/postbacks/medioot",
                        params=medioot(unique(), unique("t"), "1.00", secret="wrong"),
                    )
                    for _ in range(10)
                )
            )
            assert [a.status for a in answers] == [403] * 10
            for answer in answers:
                answer.release()
            await asyncio.sleep(1)  # spread the burst over several scrapes

        async def signature_alert() -> dict[str, Any] | None:
            body = await get_json(session, f"{api}/alerts")
            for alert in body["data"]["alerts"] if body else []:
                if alert["labels"].get("alertname") == "LedgerSignatureFailuresHigh":
                    return alert  # type: ignore[no-any-return]
            return None

        alert = await prometheus.until(
            "LedgerSignatureFailuresHigh", ALERT_TIMEOUT, signature_alert
        )

    assert alert["state"] in {"pending", "firing"}
    assert alert["labels"]["provider"] == "medioot"
    assert alert["labels"]["severity"] == "warning"
    # About 100 %: a scrape may fall between a refusal's two counter increments.
    assert re.fullmatch(
        r"medioot: [\d.]+% of postbacks fail authentication", alert["annotations"]["summary"]
    )
