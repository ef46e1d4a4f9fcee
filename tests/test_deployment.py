"""A deployment records its partition count and limits in Redis; every client, gateway and worker must agree.

The first process of a namespace records them; a later one configured otherwise fails when it
starts or connects, with :class:`DeploymentMismatch` naming the recorded values, instead of
creating instances on partitions no worker consumes (they would stay ``queued`` forever) or
enforcing other limits than the workers do. Nothing is declared on RabbitMQ before the check.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import hutch
import pytest
from click.testing import CliRunner
from hutch import DeploymentMismatch, Limits, Settings
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.gateway.cli import main
from hutch.store.redis import RedisStore
from redis.asyncio import Redis

from tests.conftest import drop_namespace
from tests.helpers import unique

pytestmark = [pytest.mark.redis, pytest.mark.rabbitmq]

ROOT = Path(__file__).resolve().parents[1]
RECORDED_PARTITIONS = 4
RECORDED_LIMITS = Limits(max_steps=5)


@pytest.fixture
async def deployment(redis_url: str, amqp_url: str) -> AsyncIterator[str]:
    """The namespace of a deployment whose workers recorded 4 partitions and ``max_steps = 5``."""
    namespace = unique("test")
    store = RedisStore(Redis.from_url(redis_url), RECORDED_PARTITIONS, namespace=namespace)
    try:
        await store.check_deployment(RECORDED_LIMITS)  # what the deployment's first worker did at start
    finally:
        await store.close()
    yield namespace
    # A client that agrees declares the deployment's queues; delete them with the keys.
    transport = RabbitMQTransport(amqp_url, partitions=RECORDED_PARTITIONS, namespace=namespace)
    await transport.start()
    await transport.delete_topology()
    await transport.close()
    await drop_namespace(namespace)


@pytest.mark.parametrize(
    ("partitions", "limits", "message"),
    [
        (16, RECORDED_LIMITS, "4 partitions (namespace '{ns}') but this process has HUTCH_PARTITIONS=16"),
        (4, Limits(), "enforces the limits max_steps=5 but this process has max_steps=10000"),
    ],
    ids=["partitions", "limits"],
)
async def test_a_client_configured_unlike_its_deployment_fails_when_it_connects(
    deployment: str, redis_url: str, amqp_url: str, partitions: int, limits: Limits, message: str
) -> None:
    settings = Settings(redis_url=redis_url, amqp_url=amqp_url, namespace=deployment, partitions=partitions)

    with pytest.raises(DeploymentMismatch) as caught:
        async with hutch.connect(settings=settings, limits=limits):
            pass
    assert message.format(ns=deployment) in str(caught.value)

    # One that agrees connects (and checks nothing more per create).
    agreeing = settings.model_copy(update={"partitions": RECORDED_PARTITIONS, "limits": RECORDED_LIMITS})
    async with hutch.connect(settings=agreeing) as client:
        assert client.limits == RECORDED_LIMITS


def _cli_env(monkeypatch: pytest.MonkeyPatch, redis_url: str, amqp_url: str, namespace: str, **more: str) -> None:
    monkeypatch.setenv("HUTCH_CONFIG", str(ROOT / "tests" / "no-such-hutch.toml"))
    for name, value in {
        "HUTCH_REDIS_URL": redis_url,
        "HUTCH_AMQP_URL": amqp_url,
        "HUTCH_NAMESPACE": namespace,
        "HUTCH_GATEWAY_TOKENS": "t0ken",
        **more,
    }.items():
        monkeypatch.setenv(name, value)


COMMANDS = {
    "worker": ["worker", "--workflow", "order=examples.order:OrderWorkflow"],
    "gateway": ["gateway", "--port", "0"],
    "dev": ["dev", "--port", "0", "--workflow", "order=examples.order:OrderWorkflow"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_the_servers_refuse_a_deployment_with_another_partition_count(
    deployment: str, redis_url: str, amqp_url: str, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    _cli_env(monkeypatch, redis_url, amqp_url, deployment, HUTCH_LIMITS__MAX_STEPS="5")  # the default 16 partitions

    result = CliRunner().invoke(main, COMMANDS[command])

    assert result.exit_code == 2, result.output
    assert "Error: this Redis holds data for 4 partitions" in result.output
    assert "HUTCH_PARTITIONS=16" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("source", ["environment", "hutch.toml"])
def test_the_servers_take_their_limits_from_the_settings_and_refuse_others(
    deployment: str,
    redis_url: str,
    amqp_url: str,
    command: str,
    source: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _cli_env(monkeypatch, redis_url, amqp_url, deployment, HUTCH_PARTITIONS="4")
    if source == "environment":
        monkeypatch.setenv("HUTCH_LIMITS__MAX_STEPS", "6")
    else:
        config = tmp_path / "hutch.toml"
        config.write_text("[limits]\nmax_steps = 6\n")
        monkeypatch.setenv("HUTCH_CONFIG", str(config))

    result = CliRunner().invoke(main, COMMANDS[command])

    assert result.exit_code == 2, result.output
    assert "enforces the limits max_steps=5 but this process has max_steps=6" in " ".join(result.output.split())
