"""Secrets never reach the logs.

The check itself runs once every other test is done (`tests/logcapture.py`,
`pytest_sessionfinish`): it fails the run when any log line of the whole suite holds a
configured secret, URL token, API key or a signature that was sent. These tests prove that the
mechanism works: each sends a fake secret down one path a log line can take (structlog, a
standard-library logger, an exception's traceback, a `capture_logs` block, a service process the
tests start) into a redirected file, never into the run's own capture, and checks that `scan`
finds it there. The last test pins down what the check found in the service: request lines the
HTTP parser refuses are logged with the URL token or signature they carry.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import structlog

from service.app import create_app
from service.logs import log
from tests import helpers, logcapture
from tests.logcapture import CAPTURE, SECRETS, SIGNATURES, scan

ROOT = Path(__file__).resolve().parents[1]


def fake() -> str:
    return f"fake-secret-{uuid.uuid4().hex[:12]}"


def holds(path: Path, text: str) -> bool:
    return text in path.read_text(encoding="utf-8", errors="replace")


def test_the_capture_is_installed_for_the_whole_run() -> None:
    marker = f"capture-probe-{uuid.uuid4().hex}"
    log.info("logcapture probe", marker=marker)
    logging.getLogger("aiohttp.server").warning("logcapture probe %s", marker)
    session = CAPTURE.folder / "session.log"
    text = session.read_text(encoding="utf-8")
    assert text.count(marker) == 2, "a structlog or a logging line did not reach the capture"
    assert os.environ[logcapture.ENV_DIR] == str(CAPTURE.folder)
    assert (CAPTURE.folder / "site" / "sitecustomize.py").exists()
    # The suite's own secrets are known to the check.
    helpers.settings("postgresql://u@/d")  # parsing a configuration records its secrets
    assert helpers.MEDIOOT_SECRET in SECRETS
    assert helpers.READ_KEY in SECRETS


def test_configured_secrets_and_signatures_are_collected() -> None:
    secret, key, token = fake(), fake(), "tok_" + uuid.uuid4().hex
    helpers.settings(
        "postgresql://u@/d",
        providers=[
            {"name": "m", "protocol": "medioot", "secret": secret},
            {"name": "a", "protocol": "adgate_receipts", "url_token": token},
        ],
        api_keys=[{"name": "k", "key": key, "scopes": ["read"]}],
    )
    assert {secret, key, token} <= set(SECRETS)
    signature = helpers.md5("user" + "tx" + "1.00" + secret)
    assert signature in SIGNATURES
    # The service's own check of a signature is remembered too (it uses hashlib.md5).
    assert hashlib.md5(b"anything").hexdigest() in SIGNATURES


def test_the_scan_finds_secrets_on_every_path(tmp_path: Path) -> None:
    secret, token = fake(), "tok_" + uuid.uuid4().hex
    signature = hashlib.md5(f"u-1t-11.00{secret}".encode()).hexdigest()
    secrets = {secret: "providers[m].secret", token: "providers[a].url_token"}
    capture = tmp_path / "redirected.log"
    with CAPTURE.redirected(capture):
        log.info("postback", detail=f"the secret {secret}")  # structlog
        # A library, with a traceback. (Not aiohttp.server: its records are stripped of request
        # text before they are written, which test_fuzz_postbacks checks on the real path.)
        logging.getLogger("asyncpg.pool").error(
            "Failed to restore the pool", exc_info=ValueError(f"GET /postbacks/a/{token} HTTP/1.1")
        )
        try:
            raise RuntimeError(f"signature={signature.upper()}")
        except RuntimeError:
            log.exception("unhandled error")  # structlog, exception formatted
        with structlog.testing.capture_logs() as kept:  # what a test captures is teed too
            log.info("captured", token=token)
        assert kept
    found = scan([capture], secrets, {signature})
    assert [what for _, what in found] == [
        "providers[m].secret",
        "providers[a].url_token",
        "a signature",
        "providers[a].url_token",
    ], found
    shown = " ".join(line for line, _ in found)
    assert secret not in shown and token not in shown, "the report must not print the secret"
    assert "<providers[m].secret>" in shown
    # None of it went to the run's capture.
    for path in CAPTURE.files():
        if path.exists():
            assert not holds(path, secret) and not holds(path, token)
            assert not holds(path, signature) and not holds(path, signature.upper())


def test_the_scan_finds_secrets_logged_by_a_service_process(tmp_path: Path) -> None:
    """A process started by a test tees its log lines and reports its configuration's secrets;
    here into a folder of its own, so the fake secret stays out of the run's capture."""
    secret = fake()
    config = tmp_path / "ledger.toml"
    config.write_text(
        f'[[providers]]\nname = "m"\nprotocol = "medioot"\nsecret = "{secret}"\n'
        '[database]\nurl = "postgresql://u@127.0.0.1:1/d"\n'
    )
    program = (
        "import sys; from service import logs, settings\n"
        f"s = settings.load({str(config)!r}, {{}})\n"
        "logs.configure()\n"
        "logs.log.info('oops', secret=s.providers[0].secret)\n"
    )
    env = {**os.environ, logcapture.ENV_DIR: str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", program], cwd=ROOT, env=env, capture_output=True, timeout=60
    )
    assert done.returncode == 0, done.stderr.decode()
    assert secret in done.stdout.decode(), "the process's own output is unchanged"
    logs = sorted(tmp_path.glob("child-*.log"))
    assert len(logs) == 1
    reported = sorted(tmp_path.glob("secrets-*.json"))
    assert reported and secret in reported[0].read_text()
    found = scan(logs, {secret: "providers[m].secret"}, set())
    assert len(found) == 1 and "oops" in found[0][0] and secret not in found[0][0]


def test_short_texts_are_not_taken_for_secrets(tmp_path: Path) -> None:
    capture = tmp_path / "short.log"
    capture.write_text('{"event": "request", "status": 200, "route": "/postbacks/{name}"}\n')
    assert scan([capture], {"post": "too short", "200": "too short"}, set()) == []


# --- what the check found --------------------------------------------------------------------

TOKEN = "nosecret-adgate-token-0123456789"


@pytest.mark.parametrize(
    "tail",
    [
        b"&shm_datetime=2024-05-01 12:00:00",  # a macro filled in without URL encoding
        b"&shm_offer_name=\xc3\xa9",  # raw UTF-8 in the query
        b"&pad=" + b"a" * 9000,  # longer than a request line may be
    ],
    ids=["space", "raw-utf8", "too-long"],
)
async def test_a_request_line_the_parser_refuses_does_not_log_the_url_token(
    aiohttp_client: Any, database_url: str, tmp_path: Path, tail: bytes
) -> None:
    """Found by the fuzzer: aiohttp logs every request it cannot parse at level error, with
    the request line (the first 100 bytes of it when too long) in the exception text. An AdGate
    URL carries the provider's token in its path; a Medioot one its signature in the query."""
    settings = helpers.settings(
        database_url,
        providers=[{"name": "adgate", "protocol": "adgate_receipts", "url_token": TOKEN}],
    )
    client = await aiohttp_client(create_app(settings))
    signature = helpers.md5("u" + "t" + "1" + helpers.MEDIOOT_SECRET)
    capture = tmp_path / "refused.log"
    with CAPTURE.redirected(capture):
        for target in (
            f"/postbacks/adgate/{TOKEN}?s1=u&shm_event_id=e".encode(),
            f"/postbacks/medioot?subid=u&transid=t&reward=1&signature={signature}".encode(),
        ):
            reader, writer = await asyncio.open_connection(client.host, client.port)
            writer.write(b"GET " + target + tail + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await reader.read(200)
            writer.close()
            assert answer.startswith(b"HTTP/1.") and b" 400 " in answer[:16], answer
    leaks = scan([capture], {TOKEN: "providers[adgate].url_token"}, {signature})
    assert not leaks, "\n".join(f"[{what}] {line[:300]}" for line, what in leaks)
