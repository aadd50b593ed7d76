"""``jdxmail queue``: list, show, flush, retry, delete, failed — also while delivering."""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path

from tests.conftest import WriteConfig, invoke
from tests.queue.conftest import RunEngine, StartUpstream, message, relay_for, settings_for
from typer.testing import CliRunner

from jdxmail.queue.spool import Spool, spool_stats
from jdxmail.queue.state import DeliveryState, RecipientState, write_json_atomic


def config_for(write_config: WriteConfig, tmp_path: Path) -> Path:
    """A config whose spool is under *tmp_path*."""
    return write_config(
        json.dumps({"Paths": {"Spool": str(tmp_path / "spool"), "Mailbox": str(tmp_path / "mb")}})
    )


async def queued(tmp_path: Path, count: int = 2) -> list[str]:
    """Store *count* messages in the spool under *tmp_path*; their ids."""
    async with Spool(tmp_path / "spool", tmp_path / "mb") as spool:
        return [await spool.store(message(n)) for n in range(count)]


def give_state(tmp_path: Path, queue_id: str, **fields: object) -> None:
    """Write a delivery state for *queue_id* as the engine would."""
    state = DeliveryState.fresh(("bob@example.net",))
    for key, value in fields.items():
        setattr(state, key, value)
    write_json_atomic(tmp_path / "spool" / "state" / f"{queue_id}.json", state.to_json())


def make_failed(tmp_path: Path, queue_id: str) -> None:
    """Move *queue_id* to failed/ with a 550 reply, as the engine does."""
    state = DeliveryState(
        attempts=1,
        recipients={
            "bob@example.net": RecipientState("failed", "5.1.1", "550 5.1.1 no such user", "up")
        },
    )
    spool = tmp_path / "spool"
    write_json_atomic(spool / "failed" / f"{queue_id}.json", {"state": state.to_json()})
    os.replace(spool / "queue" / f"{queue_id}.msg", spool / "failed" / f"{queue_id}.msg")


def test_list_empty(runner: CliRunner, write_config: WriteConfig, tmp_path: Path) -> None:
    """An empty or missing spool lists as empty, exit 0."""
    code, out, _ = invoke(
        runner, "queue", "list", "--config", str(config_for(write_config, tmp_path))
    )
    assert code == 0
    assert "The queue is empty" in out


async def test_list_shows_attempts_and_reply(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """queue list shows each message with its tries and the upstream's last reply."""
    first, second = await queued(tmp_path)
    give_state(tmp_path, first, attempts=2, last_reply="451 4.3.0 busy", last_relay="gmail")
    config = str(config_for(write_config, tmp_path))
    code, out, _ = invoke(runner, "queue", "list", "--config", config, "--json")
    assert code == 0
    rows = json.loads(out)
    assert [r["id"] for r in rows] == [first, second]
    assert rows[0]["attempts"] == 2
    assert rows[0]["last_reply"] == "451 4.3.0 busy"
    assert rows[0]["relay"] == "gmail"
    assert rows[0]["from"] == "alice@example.com"
    assert rows[1]["attempts"] == 0
    code, out, _ = invoke(runner, "queue", "list", "--config", config)
    assert code == 0
    assert "2 queued message(s)" in out
    assert first in out
    assert second in out


async def test_show_message(runner: CliRunner, write_config: WriteConfig, tmp_path: Path) -> None:
    """queue show prints the envelope, recipients and the message header."""
    (queue_id,) = await queued(tmp_path, 1)
    config = str(config_for(write_config, tmp_path))
    code, out, _ = invoke(runner, "queue", "show", queue_id, "--config", config)
    assert code == 0
    assert "<alice@example.com>" in out
    assert "<bob@example.net> pending" in out
    assert "Subject: test 0" in out
    code, _, err = invoke(runner, "queue", "show", "nope", "--config", config)
    assert code == 1
    assert "no queued or failed message with id nope" in err


async def test_flush_makes_everything_due(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """queue flush resets each next try and signals a running server."""
    ids = await queued(tmp_path)
    give_state(tmp_path, ids[0], attempts=3, next_try=9e9)
    code, out, _ = invoke(
        runner, "queue", "flush", "--config", str(config_for(write_config, tmp_path))
    )
    assert code == 0
    assert "2 message(s) due now" in out
    state = json.loads((tmp_path / "spool" / "state" / f"{ids[0]}.json").read_text())
    assert state["next_try"] == 0
    assert (tmp_path / "spool" / "flush").exists()


async def test_failed_then_retry_requeues(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """queue failed shows the refusal; queue retry puts the message back with bob pending."""
    (queue_id,) = await queued(tmp_path, 1)
    make_failed(tmp_path, queue_id)
    config = str(config_for(write_config, tmp_path))
    code, out, _ = invoke(runner, "queue", "failed", "--config", config, "--json")
    assert code == 0
    (row,) = json.loads(out)
    assert row["outcomes"]["bob@example.net"]["reply"] == "550 5.1.1 no such user"
    code, out, _ = invoke(runner, "queue", "retry", queue_id, "--config", config)
    assert code == 0
    assert "queued again" in out
    stats = spool_stats(tmp_path / "spool")
    assert (stats.queued, stats.failed) == (1, 0)
    state = json.loads((tmp_path / "spool" / "state" / f"{queue_id}.json").read_text())
    assert state["recipients"]["bob@example.net"]["status"] == "pending"


async def test_delete_asks_and_respects_locks(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """queue delete asks first, refuses a message mid-delivery, and deletes with --yes."""
    first, second = await queued(tmp_path)
    config = str(config_for(write_config, tmp_path))
    code, _, err = invoke(runner, "queue", "delete", first, "--config", config, input="n\n")
    assert code == 1
    assert "Nothing deleted" in err
    assert spool_stats(tmp_path / "spool").queued == 2
    fd = os.open(tmp_path / "spool" / "queue" / f"{second}.msg", os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        code, _, err = invoke(runner, "queue", "delete", second, "--config", config, "--yes")
    finally:
        os.close(fd)
    assert code == 1
    assert "being delivered right now" in err
    code, out, _ = invoke(runner, "queue", "delete", first, "--config", config, input="y\n")
    assert code == 0
    assert f"Deleted {first}" in out
    assert spool_stats(tmp_path / "spool").queued == 1


async def test_flush_reaches_a_running_engine(
    runner: CliRunner,
    write_config: WriteConfig,
    tmp_path: Path,
    upstream_factory: StartUpstream,
    run_engine: RunEngine,
) -> None:
    """Mail waiting for a relay that was down goes out when `queue flush` is run."""
    down = await upstream_factory()
    port = down.port
    await down.close()
    settings = settings_for(tmp_path, relay_for(down))
    running = await run_engine(settings)
    queue_id = await running.spool.store(message())
    await running.engine.wait_idle()
    config = write_config(
        json.dumps({"Paths": {"Spool": str(settings.paths.spool), "Mailbox": str(tmp_path)}})
    )
    code, out, _ = invoke(runner, "queue", "list", "--config", str(config), "--json")
    (row,) = json.loads(out)
    assert row["id"] == queue_id
    assert row["attempts"] == 1
    assert "connect" in row["last_reply"]
    back = await upstream_factory(port=port)
    code, out, _ = invoke(runner, "queue", "flush", "--config", str(config))
    assert code == 0
    await back.wait_for(1)
    await running.engine.wait_idle()
    assert spool_stats(settings.paths.spool).queued == 0


async def test_list_shows_each_pending_recipients_own_reply(
    runner: CliRunner, write_config: WriteConfig, tmp_path: Path
) -> None:
    """A recipient still pending on 451 shows its 451, not the 250 another recipient got."""
    async with Spool(tmp_path / "spool", tmp_path / "mb") as spool:
        queue_id = await spool.store(message(to=("ann@example.net", "bob@example.net")))
    state = DeliveryState(
        attempts=1,
        recipients={
            "ann@example.net": RecipientState("delivered", "2.0.0", "250 2.0.0 OK", "up"),
            "bob@example.net": RecipientState("pending", "4.2.0", "451 4.2.0 try later", "up"),
        },
        last_reply="250 2.0.0 OK",
        last_relay="up",
    )
    write_json_atomic(tmp_path / "spool" / "state" / f"{queue_id}.json", state.to_json())
    config = str(config_for(write_config, tmp_path))
    code, out, _ = invoke(runner, "queue", "list", "--config", config)
    assert code == 0
    bob = next(line for line in out.splitlines() if "bob@example.net" in line)
    assert "451 4.2.0 try later" in bob
    assert "250" not in out
