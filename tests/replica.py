"""A primary and its streaming replica (hot standby), built from the embedded server's binaries.

`ReplicaPair(root).start()` initdb's a primary on a TCP port of its own (wal_level=replica),
copies it with `pg_basebackup -R -X stream` and starts the copy on another port as a hot standby
streaming from it. Both trust every connection from 127.0.0.1 (test clusters only) and run as
the wheel's system user when we are root. The clusters and their tools are the restore drill's
(ops/backup/drill.py).
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from ops.backup.drill import Cluster, DrillError, Tools, hand_over, pg_bin
from ops.chaos.common import HOST


class ReplicaPair:
    """A primary and a hot standby streaming from it, under `root` (a new temporary folder
    when None), removed by `stop()`."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root or tempfile.mkdtemp(prefix="ledger-replica-"))
        self.root.mkdir(parents=True, exist_ok=True)
        self.tools = Tools(pg_bin(), self.root)
        self.primary = Cluster(
            "primary", self.root / "primary", self.root / "primary.log", self.tools
        )
        self.replica = Cluster(
            "replica", self.root / "replica", self.root / "replica.log", self.tools
        )

    def start(self) -> ReplicaPair:
        hand_over(self.root)
        primary, replica = self.primary, self.replica
        primary.initdb()
        # initdb's pg_hba.conf trusts replication connections from 127.0.0.1 already.
        primary.configure(
            {
                "listen_addresses": HOST,
                "port": str(primary.port),
                "unix_socket_directories": "",
                "wal_level": "replica",
                "max_wal_senders": "4",
                "fsync": "off",  # a test cluster: durability is not under test here
            },
            "tests/replica.py: the primary",
        )
        primary.start()
        self.tools.run(
            "pg_basebackup",
            *("-h", HOST, "-p", str(primary.port), "-U", "postgres", "-w"),
            *("-D", str(replica.data_dir), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
        )
        replica.configure(
            {"port": str(replica.port), "hot_standby": "on"}, "tests/replica.py: the standby"
        )
        replica.start()
        return self

    def stop(self) -> None:
        for server in (self.replica, self.primary):
            try:
                server.stop("immediate")
            except DrillError:
                pass
        shutil.rmtree(self.root, ignore_errors=True)
