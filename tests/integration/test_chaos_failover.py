"""`make chaos` failover scenario in miniature (ops/chaos/failover.py): a primary and its
synchronous standby of this module's own (in a temporary directory, never the shared test
server); under postbacks and spending requests the primary is killed -9 and the standby promoted
a second later. The service, on a multi-host database.url with target_session_attrs=read-write,
serves again on the new primary by itself; every answer in between is 503, nothing acknowledged
is lost or applied twice on the new primary, and verify there is clean."""

from __future__ import annotations

from pathlib import Path

import pytest

from ops.chaos import common, failover


@pytest.mark.slow
async def test_primary_killed_standby_promoted_nothing_acknowledged_lost(tmp_path: Path) -> None:
    opts = failover.Options(
        warmup=1.5,
        promote_delay=1.0,
        after=1.5,
        workers=1,
        rate=100,
        concurrency=6,
        users=40,
        spend_concurrency=2,
        spend_rate=30,
        spend_users=8,
        catch_up=20,
    )
    logs = tmp_path / "logs"
    logs.mkdir()
    report = await failover.run(opts, common.Say("failover"), logs)
    assert report.ok, report.render()
    f: failover.Failover = report.data["failover"]
    assert f.sync_state == "sync"
    assert f.first_ack is not None and f.first_ack.start >= f.killed_at + f.gone_after
    assert f.first_ack.end - f.killed_at <= opts.promote_delay + opts.recovery_limit
    assert f.between and all(k.endswith((" 503", " cut by the client")) for k in f.between)
    assert report.data["unacked"] == 0
    audit: common.Audit = report.data["audit"]
    assert audit.acknowledged > 0 and audit.verify_code == 0
    assert not audit.missing and not audit.double_applied and not audit.ok_twice
    assert audit.http_500 == 0
    spent = report.data["spending"]
    assert spent.lost == 0 and spent.doubled == 0 and spent.http_500 == 0
