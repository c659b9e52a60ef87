"""Every log line of the whole test run, kept and checked for secrets.

A pytest plugin (`pytest_plugins = ["tests.logcapture"]` in tests/conftest.py). The design, in
four parts, each as small as it can be:

1. **Lines.** When this module is imported (before any test module), structlog is configured the
   way the server configures it (`service.logs.configure`: JSON lines, exceptions formatted), at
   debug level so nothing is filtered out, writing to a stream that tees every rendered line to
   `.data/test-logs/<run>/session.log` and to whatever `sys.stdout` is at that moment (so
   pytest's own capture and reports see the same lines as before). `service.logs.configure` is
   wrapped, so a later call (a test running `main()` in-process) tees too. Standard-library
   logging (aiohttp, asyncpg...) reaches the same file through a handler on the root logger.
   Events swallowed by `structlog.testing.capture_logs` are teed as JSON as well (the
   `LogCapture` processor is wrapped), so a test that captures logs cannot hide one.
   Service processes that tests start (`python -m service ...`) inherit `PYTHONPATH` with a
   generated `sitecustomize.py` and `LEDGER_TEST_LOG_DIR`: in them, `service.logs.configure`
   tees to `child-<pid>.log` in the same folder, and the secrets of the configuration they
   load go to `secrets-<pid>.json`.

2. **Secrets.** Collected while the suite runs: every `Settings` that is parsed or served
   (`service.settings._validate` and `Walls.from_settings`/`ApiKeys` are wrapped) gives its
   providers' `secret` and `url_token`, its API keys and its database password; at the end,
   the constants of `tests.helpers` and of every loaded test module whose name says SECRET,
   TOKEN or KEY are added. Texts shorter than 8 characters are ignored (too common to mean
   anything).

3. **Signatures.** `hashlib.md5` is wrapped in this process: every hex digest computed (by the
   tests when they sign, by the service when it checks a signature) is remembered. A log line
   holding any of them, in either case, counts.

4. **The check** runs in `pytest_sessionfinish`, after every test and fixture teardown: it reads
   `session.log` and every `child-*.log`, and when a line holds a secret or a signature it sets
   the session's exit status to 1 and prints the lines (truncated, the secret itself replaced by
   its name); the full list goes to `leaks.txt` beside them.

`tests/test_no_secrets_in_logs.py` proves the mechanism: it logs fake secrets through each path
into a redirected file (never into the real one) and checks that `scan` finds them.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TextIO

import pytest
import structlog
import structlog.testing

import service.logs
import service.settings
from service.web import auth, walls

ROOT = Path(__file__).resolve().parents[1]
LOGS = ROOT / ".data" / "test-logs"
ENV_DIR = "LEDGER_TEST_LOG_DIR"
MIN_SECRET = 8
SHOWN = 20  # offending lines printed; all of them go to leaks.txt

# --- where lines go ------------------------------------------------------------------------------


class _Sink:
    """The file every captured line is appended to; `redirected` swaps it for a while."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8", errors="backslashreplace")
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        with self._lock:
            self._file.write(text if text.endswith("\n") else text + "\n")
            self._file.flush()

    @contextlib.contextmanager
    def redirected(self, path: Path) -> Iterator[Path]:
        with self._lock:
            saved, self._file = self._file, path.open("a", encoding="utf-8")
        try:
            yield path
        finally:
            with self._lock:
                self._file.close()
                self._file = saved


class _CurrentStdout:
    """`sys.stdout` as it is at each write (pytest swaps it per test)."""

    def write(self, text: str) -> int:
        return sys.stdout.write(text)

    def flush(self) -> None:
        sys.stdout.flush()


class Tee:
    """A text stream that writes to `stream` and appends each write to the sink."""

    def __init__(self, stream: TextIO | _CurrentStdout, sink: _Sink) -> None:
        self.stream, self.sink = stream, sink

    def write(self, text: str) -> int:
        if text.strip():
            self.sink.write(text)
        with contextlib.suppress(ValueError):  # a stream pytest already closed
            self.stream.write(text)
        return len(text)

    def flush(self) -> None:
        with contextlib.suppress(ValueError):
            self.stream.flush()


class _SinkHandler(logging.Handler):
    """Standard-library records, formatted with their traceback, into the sink."""

    def __init__(self, sink: _Sink) -> None:
        super().__init__(logging.NOTSET)
        self.sink = sink
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.sink.write(self.format(record))
        except Exception:  # a log handler must never break the code that logs
            self.handleError(record)


# --- secrets and signatures ----------------------------------------------------------------------

SECRETS: dict[str, str] = {}  # secret text -> where it was configured
SIGNATURES: set[str] = set()  # every md5 hex digest computed in this process


def remember(value: str, where: str) -> None:
    if isinstance(value, str) and len(value) >= MIN_SECRET:
        SECRETS.setdefault(value, where)


def remember_settings(settings: Any) -> None:
    for p in getattr(settings, "providers", ()):
        remember(p.secret, f"providers[{p.name}].secret")
        remember(p.url_token, f"providers[{p.name}].url_token")
    remember_keys(getattr(settings, "api_keys", ()))
    database = getattr(settings, "database", None)
    for url in (getattr(database, "url", ""), getattr(database, "owner_url", "")):
        from urllib.parse import urlsplit

        with contextlib.suppress(ValueError):
            remember(urlsplit(url).password or "", "database password")
    key = getattr(getattr(settings, "integrity", None), "chain_key", "")
    if key:
        from service.domain.chain import ChainKey

        remember(key, "integrity.chain_key")
        pads = ChainKey(key).pads()
        remember(pads[:128], "chain key inner pad")
        remember(pads[128:], "chain key outer pad")


def remember_keys(keys: Iterable[Any]) -> None:
    for k in keys:
        remember(k.key, f"api_keys[{k.name}].key")


def remember_module_constants() -> None:
    """Secrets the test modules define as constants (SECRET, TOKEN, READ_KEY...)."""
    for name, module in list(sys.modules.items()):
        if not (name == "tests" or name.startswith("tests.")) or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if isinstance(value, str) and re.search(r"SECRET|TOKEN|KEY", attr):
                remember(value, f"{name}.{attr}")


class _RecordingMD5:
    """hashlib's md5 object, remembering every hex digest it gives."""

    __slots__ = ("_h",)

    def __init__(self, h: Any) -> None:
        self._h = h

    def update(self, data: Any) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        digest: str = self._h.hexdigest()
        SIGNATURES.add(digest)
        return digest

    def copy(self) -> _RecordingMD5:
        return _RecordingMD5(self._h.copy())

    def __getattr__(self, name: str) -> Any:
        return getattr(self._h, name)


# --- the scan ------------------------------------------------------------------------------------

_HEX = re.compile(r"[0-9a-f]{32,}")


def scan(
    paths: Iterable[Path], secrets: dict[str, str], signatures: set[str]
) -> list[tuple[str, str]]:
    """(where and the text around the first hit, what it holds) for every line that holds a
    secret or a signature (any case); each secret is replaced by its name in the text."""
    needles = {s.lower(): where for s, where in secrets.items() if len(s) >= MIN_SECRET}
    pattern = re.compile("|".join(map(re.escape, sorted(needles, key=len, reverse=True))))
    found = []
    for path in paths:
        with path.open(encoding="utf-8", errors="replace") as lines:
            for number, line in enumerate(lines, 1):
                low = line.lower()
                hits: list[tuple[int, str]] = []
                if needles:
                    hits += [(m.start(), needles[m.group(0)]) for m in pattern.finditer(low)]
                for m in _HEX.finditer(low):
                    run = m.group(0)
                    if any(run[i : i + 32] in signatures for i in range(len(run) - 31)):
                        hits.append((m.start(), "a signature"))
                if hits:
                    masked = line
                    for secret, where in secrets.items():
                        masked = re.sub(re.escape(secret), f"<{where}>", masked, flags=re.I)
                    at = _first_hit(masked, {h for _, h in hits}, signatures)
                    shown = masked[max(0, at - 120) : at + 180]
                    shown = " ".join(shown.replace("\\n", " ").split())
                    what = ", ".join(sorted({h for _, h in hits}))
                    found.append((f"{path.name}:{number}: ...{shown}...", what))
    return found


def _first_hit(masked: str, names: set[str], signatures: set[str]) -> int:
    """Where the first masked secret or signature is in a line, to show the text around it."""
    places = [masked.find(f"<{name}>") for name in names]
    for m in _HEX.finditer(masked.lower()):
        run = m.group(0)
        if any(run[i : i + 32] in signatures for i in range(len(run) - 31)):
            places.append(m.start())
    return min((p for p in places if p >= 0), default=0)


# --- installation --------------------------------------------------------------------------------


class Capture:
    """What this plugin installed for the run."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.sink = _Sink(folder / "session.log")
        self.handler = _SinkHandler(self.sink)

    def files(self) -> list[Path]:
        return [self.folder / "session.log", *sorted(self.folder.glob("child-*.log"))]

    @contextlib.contextmanager
    def redirected(self, path: Path) -> Iterator[Path]:
        """Send what this process logs to `path` instead of the run's file, for a while (to
        prove the check without leaving a fake secret where the real check looks)."""
        with self.sink.redirected(path):
            yield path


def _run_folder() -> Path:
    LOGS.mkdir(parents=True, exist_ok=True)
    for old in LOGS.iterdir():  # earlier runs' folders, a day old or more
        with contextlib.suppress(OSError):
            if old.is_dir() and time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old)
    folder = LOGS / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    folder.mkdir()
    return folder


_SITECUSTOMIZE = """\
# Generated by tests/logcapture.py for the service processes a test run starts.
import os
import sys

def _install():
    folder = os.environ.get("LEDGER_TEST_LOG_DIR")
    if not folder:
        return
    try:
        import service.logs as logs
    except Exception:
        return
    original = logs.configure

    class Tee:
        def __init__(self, stream, sink):
            self.stream, self.sink = stream, sink

        def write(self, text):
            if text.strip():
                self.sink.write(text if text.endswith("\\n") else text + "\\n")
                self.sink.flush()
            return self.stream.write(text)

        def flush(self):
            self.stream.flush()

    def configure(level="info", stream=sys.stdout):
        path = os.path.join(folder, "child-%d.log" % os.getpid())
        sink = open(path, "a", encoding="utf-8", errors="backslashreplace")
        original(level, Tee(stream, sink))

    logs.configure = configure

    # The secrets of the configuration it loads, for the check at the end of the run.
    import json
    import service.settings as settings

    validate = settings._validate

    def remembering(parsed):
        validate(parsed)
        found = [p.secret for p in parsed.providers] + [p.url_token for p in parsed.providers]
        found += [k.key for k in parsed.api_keys]
        found.append(parsed.integrity.chain_key)
        path = os.path.join(folder, "secrets-%d.json" % os.getpid())
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps([s for s in found if s]) + "\\n")

    settings._validate = remembering

try:  # never in the way of the process itself
    _install()
except Exception:
    pass

# Then whatever sitecustomize this one hides.
def _chain():
    import importlib.machinery
    import importlib.util
    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or ".") != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)

try:
    _chain()
except Exception:
    pass
"""


def _install() -> Capture:
    capture = Capture(_run_folder())

    # 1. structlog as the server configures it, teed; every later configure call teed too.
    original_configure = service.logs.configure

    @functools.wraps(original_configure)
    def configure(level: str = "info", stream: Any = None) -> None:
        tee = Tee(stream if stream is not None else _CurrentStdout(), capture.sink)
        original_configure(level, tee)  # type: ignore[arg-type]
        # Loggers must follow later configuration (capture_logs, a test's own configure).
        structlog.configure(cache_logger_on_first_use=False)
        # Standard-library records reach the file once: through the service's own root
        # handler when it writes to the tee (rendered as in production), else through ours.
        root = logging.getLogger()
        if any(getattr(h, "stream", None) is tee for h in root.handlers):
            root.removeHandler(capture.handler)
        elif capture.handler not in root.handlers:
            root.addHandler(capture.handler)

    service.logs.configure = configure  # type: ignore[assignment]
    configure("debug")

    # Events that capture_logs keeps from the renderer.
    original_call = structlog.testing.LogCapture.__call__

    def captured(self: Any, logger: Any, method_name: str, event_dict: Any) -> Any:
        text = json.dumps({"level": method_name, **event_dict}, default=repr, ensure_ascii=False)
        capture.sink.write(text)
        return original_call(self, logger, method_name, event_dict)

    structlog.testing.LogCapture.__call__ = captured  # type: ignore[method-assign]

    # 2. Secrets of every configuration the run parses or serves.
    original_validate = service.settings._validate

    def validate(settings: Any) -> None:
        original_validate(settings)
        remember_settings(settings)

    service.settings._validate = validate
    original_walls = walls.Walls.from_settings.__func__  # type: ignore[attr-defined]

    def from_settings(cls: Any, settings: Any) -> Any:
        remember_settings(settings)
        return original_walls(cls, settings)

    walls.Walls.from_settings = classmethod(from_settings)  # type: ignore[assignment]
    original_keys = auth.ApiKeys.__init__

    def keys_init(self: Any, keys: Any) -> None:
        remember_keys(keys)
        original_keys(self, keys)

    auth.ApiKeys.__init__ = keys_init  # type: ignore[method-assign]

    # 3. Signatures: every md5 hex digest computed here.
    original_md5 = hashlib.md5

    def md5(*args: Any, **kwargs: Any) -> _RecordingMD5:
        return _RecordingMD5(original_md5(*args, **kwargs))

    hashlib.md5 = md5  # type: ignore[assignment]

    # Service processes started by tests: a sitecustomize that tees their configure.
    site = capture.folder / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_SITECUSTOMIZE)
    os.environ[ENV_DIR] = str(capture.folder)
    # The repository's own service package first: sitecustomize imports it before `-m` puts the
    # working directory on sys.path, and an installed (editable) copy may be another checkout's.
    path = os.environ.get("PYTHONPATH", "")
    # This checkout too: sitecustomize imports `service` before `python -m` puts the working
    # directory on sys.path, so without it a child would load whichever checkout the virtual
    # environment's editable install points at, not the one under test.
    here = str(Path(__file__).resolve().parents[1])
    os.environ["PYTHONPATH"] = os.pathsep.join([str(site), here, *([path] if path else [])])
    return capture


CAPTURE = _install()


# --- the check -----------------------------------------------------------------------------------


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    from tests import helpers

    for name in ("MEDIOOT_SECRET", "READ_KEY", "NO_SCOPE_KEY"):
        remember(getattr(helpers, name), f"tests.helpers.{name}")
    remember_module_constants()
    for path in CAPTURE.folder.glob("secrets-*.json"):  # what service processes loaded
        for line in path.read_text(encoding="utf-8").splitlines():
            for secret in json.loads(line):
                remember(secret, f"configuration loaded by a service process ({path.name})")
    found = scan([p for p in CAPTURE.files() if p.exists()], SECRETS, SIGNATURES)
    lines = sum(1 for p in CAPTURE.files() if p.exists() for _ in p.open("rb"))
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not found:
        if reporter is not None:
            reporter.write_line(
                f"logcapture: {lines} log lines checked for {len(SECRETS)} secrets and"
                f" {len(SIGNATURES)} signatures: none found ({CAPTURE.folder})"
            )
        return
    (CAPTURE.folder / "leaks.txt").write_text(
        "".join(f"[{what}] {line}\n" for line, what in found), encoding="utf-8"
    )
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if reporter is not None:
        reporter.write_sep("=", "secrets, tokens or signatures in log lines", red=True)
        reporter.write_line(
            f"{len(found)} of {lines} log lines hold a configured secret, token, API key or a"
            f" signature that was sent (all in {CAPTURE.folder / 'leaks.txt'}):"
        )
        for line, what in found[:SHOWN]:
            reporter.write_line(f"  [{what}] {line[:300]}")
        if len(found) > SHOWN:
            reporter.write_line(f"  ... and {len(found) - SHOWN} more")
