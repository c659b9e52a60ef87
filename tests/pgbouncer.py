"""A real PgBouncer in transaction pooling, run as a subprocess in front of the test server.

`start(admin_dsn, pool_size)` writes a pgbouncer.ini and an auth file in a temporary folder and
starts Debian's pgbouncer on a free port; `Bouncer.url(dsn)` is `dsn` through it. PgBouncer
refuses to run as root: as root it switches to the owner of the embedded server's socket (the
wheel's `pgserver` user), or `nobody`."""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlencode, urlsplit, urlunsplit

CANDIDATES = ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer")


def binary() -> str | None:
    """Where pgbouncer is (/usr/sbin is often not in a user's PATH), or None."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return next((path for path in CANDIDATES if os.access(path, os.X_OK)), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Bouncer:
    port: int
    process: subprocess.Popen[bytes]
    folder: Path

    def url(self, dsn: str) -> str:
        """`dsn` (same user, password and database) through PgBouncer."""
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = f"{userinfo}@127.0.0.1:{self.port}" if userinfo else f"127.0.0.1:{self.port}"
        query = {k: v for k, v in parse_qs(parts.query).items() if k != "host"}
        return urlunsplit(parts._replace(netloc=netloc, query=urlencode(query, doseq=True)))

    def log(self) -> str:
        path = self.folder / "pgbouncer.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def _server(dsn: str) -> tuple[str, int]:
    """The host (or socket folder) and port PgBouncer reaches the server `dsn` names at."""
    parts = urlsplit(dsn)
    query = parse_qs(parts.query)
    host = query.get("host", [parts.hostname or "127.0.0.1"])[0]
    port = int(query.get("port", [parts.port or 5432])[0])
    return host, port


def start(
    admin_dsn: str,
    users: dict[str, str],
    *,
    pool_size: int = 3,
    extra: str = "",
) -> Bouncer:
    """PgBouncer in transaction pooling for every database of `admin_dsn`'s server, for `users`
    (name: password, "" for none), `pool_size` server connections per database and user."""
    path = binary()
    if path is None:
        raise RuntimeError("pgbouncer is not installed")
    host, server_port = _server(admin_dsn)
    port = _free_port()
    folder = Path(tempfile.mkdtemp(prefix="pgbouncer-"))
    # As root, run as whoever owns the server's socket folder (it can reach the socket).
    owner = None
    if os.geteuid() == 0:
        uid = os.stat(host).st_uid if host.startswith("/") else pwd.getpwnam("nobody").pw_uid
        owner = pwd.getpwuid(uid).pw_name
        os.chown(folder, uid, -1)
    auth = "".join(f'"{user}" "{password}"\n' for user, password in users.items())
    (folder / "userlist.txt").write_text(auth)
    (folder / "pgbouncer.ini").write_text(
        "[databases]\n"
        f"* = host={host} port={server_port}\n"
        "[pgbouncer]\n"
        "listen_addr = 127.0.0.1\n"
        f"listen_port = {port}\n"
        "unix_socket_dir =\n"
        "auth_type = trust\n"
        f"auth_file = {folder / 'userlist.txt'}\n"
        "pool_mode = transaction\n"
        f"default_pool_size = {pool_size}\n"
        "min_pool_size = 0\n"
        "reserve_pool_size = 0\n"
        "max_client_conn = 200\n"
        "pidfile =\n"
        "server_reset_query =\n"
        "server_check_delay = 0\n"
        "log_connections = 0\n"
        "log_disconnections = 0\n"
        f"{extra}"
    )
    for name in ("userlist.txt", "pgbouncer.ini"):
        (folder / name).chmod(0o644)
    command = [path, str(folder / "pgbouncer.ini")]
    if owner is not None:
        command[1:1] = ["-u", owner]
    with open(folder / "pgbouncer.log", "wb") as log:  # it logs on stderr when in the foreground
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    bouncer = Bouncer(port=port, process=process, folder=folder)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_text = bouncer.log()
            bouncer.stop()
            raise RuntimeError(f"pgbouncer exited {process.returncode}: {log_text}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return bouncer
        time.sleep(0.05)
    bouncer.stop()
    raise RuntimeError("pgbouncer did not start listening within 10 seconds")


def users_of(*dsns: str) -> dict[str, str]:
    """The users (and passwords) of `dsns`, for the auth file."""
    found: dict[str, str] = {}
    for dsn in dsns:
        parts = urlsplit(dsn)
        if parts.username:
            found[unquote(parts.username)] = unquote(parts.password or "")
    return found
