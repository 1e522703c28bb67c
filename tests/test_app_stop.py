"""App.stop completes when a background task has died: the death is logged when it happens,
and stopping still closes the server and every pool."""

from __future__ import annotations

import asyncio
import logging

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from db.migrations.fleet import run_one
from server.app import start_app


async def _crash() -> None:
    await asyncio.sleep(0)
    raise RuntimeError("the watcher broke")


def test_stop_completes_after_a_background_task_died(
    fresh_db: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        await run_one(fresh_db, "master", mode="up")
        app = await start_app(fresh_db, host="127.0.0.1", port=0)
        app.tasks.append(asyncio.create_task(_crash(), name="a watcher"))
        app.run_in_background(_crash(), "another watcher")
        await asyncio.sleep(0.1)  # both have died by now
        async with asyncio.timeout(30):
            await app.stop(1.0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{app.port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError):  # nobody listens any more
                await health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(), timeout=2
                )

    with caplog.at_level(logging.ERROR, logger="studio.app"):
        asyncio.run(scenario())
    assert "background task another watcher died" in caplog.text
