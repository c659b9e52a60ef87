"""The restore drill of ops/backup (ops/backup/drill.py) passes: a base backup and the WAL
archive of a cluster of its own bring back the ledger as it was at a chosen moment, verify is
clean, and postbacks after that moment are credited again when redelivered, once.

It runs its own PostgreSQL clusters with the wheel's binaries (never the shared test server).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ops.backup import drill
from ops.chaos import common


@pytest.mark.slow
async def test_restore_drill_recovers_to_the_target_and_passes() -> None:
    opts = drill.Options(batch=20, users=6, seed=20240601)
    report = await drill.drill(opts, common.Say("restore-drill"))
    assert report.ok, report.render()
    assert report.data["base_backup_bytes"] > 0
    assert set(report.data["seconds"]) == {"base backup", "restore", "drill"}
    audit: common.Audit = report.data["audit"]
    assert audit.verify_code == 0 and audit.events == 20 * 3 + 4 * 2
    assert not audit.missing and not audit.double_applied and not audit.wallets_off


def _archive(src: Path, archive: Path) -> int:
    command = ["sh", str(drill.ARCHIVE_SCRIPT), str(src), src.name, str(archive)]
    return subprocess.run(command, capture_output=True, check=False).returncode


def test_archive_script_copies_once_and_never_overwrites(tmp_path: Path) -> None:
    archive = tmp_path / "archive"
    archive.mkdir()
    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(b"wal" * 1000)
    assert _archive(segment, archive) == 0
    assert (archive / segment.name).read_bytes() == segment.read_bytes()
    assert [p.name for p in archive.iterdir()] == [segment.name]  # no partial file left
    assert _archive(segment, archive) == 0  # the same bytes again: a retry, fine
    segment.write_bytes(b"other")
    assert _archive(segment, archive) == 1  # different bytes under the name: refused
    assert (archive / segment.name).read_bytes() == b"wal" * 1000
