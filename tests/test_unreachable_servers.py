"""A server that cannot be reached at start is one clear error naming it, never a hang or a traceback."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Iterator

import hutch
import pytest
from click.testing import CliRunner
from hutch import BrokerUnavailable, InvalidInputError, ServiceUnavailable, Settings, StoreUnavailable
from hutch.broker.connection import connect, connect_once
from hutch.broker.transports.rabbitmq import RabbitMQTransport
from hutch.gateway.cli import main
from hutch.settings import parse_amqp_urls, redact_url

from examples.order import OrderWorkflow
from tests.conftest import AMQP_URL, REDIS_URL
from tests.helpers import unique


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """A server that accepts TCP connections and never says a word (a wedged broker)."""
    held: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_refused_broker_is_broker_unavailable_with_the_password_redacted(refused_port: int) -> None:
    transport = RabbitMQTransport(f"amqp://guest:s3cret@127.0.0.1:{refused_port}/", namespace="tt-refused")
    with pytest.raises(BrokerUnavailable) as caught:
        await transport.start()
    message = str(caught.value)
    assert f"127.0.0.1:{refused_port}" in message
    assert "s3cret" not in message
    assert isinstance(caught.value, ServiceUnavailable)


async def test_a_broker_that_never_answers_the_handshake_times_out_with_a_hint(silent_port: int) -> None:
    transport = RabbitMQTransport(
        f"amqp://guest:guest@127.0.0.1:{silent_port}/", namespace="tt-silent", connect_timeout_s=0.3
    )
    with pytest.raises(BrokerUnavailable, match=re.escape("did not complete the AMQP handshake within 0.3 s")):
        await transport.start()


async def test_connecting_a_client_to_a_refused_redis_is_store_unavailable(refused_port: int) -> None:
    with pytest.raises(
        StoreUnavailable, match=re.escape(f"cannot connect to Redis at redis://127.0.0.1:{refused_port}/0")
    ):
        async with hutch.connect(
            {"order": OrderWorkflow}, redis_url=f"redis://127.0.0.1:{refused_port}/0", amqp_url=AMQP_URL
        ):
            pass


@pytest.mark.parametrize("server", ["redis", "redis-with-password", pytest.param("rabbitmq", marks=pytest.mark.redis)])
def test_hutch_worker_names_the_unreachable_server_and_exits_1(
    server: str, refused_port: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = {"HUTCH_REDIS_URL": REDIS_URL, "HUTCH_AMQP_URL": AMQP_URL, "HUTCH_NAMESPACE": "tt-unreachable"}
    if server == "redis":
        urls["HUTCH_REDIS_URL"] = f"redis://127.0.0.1:{refused_port}/0"
        expected = f"Error: cannot connect to Redis at redis://127.0.0.1:{refused_port}/0"
    elif server == "redis-with-password":
        urls["HUTCH_REDIS_URL"] = f"redis://:s3cret@127.0.0.1:{refused_port}/0"  # Redis's password-only form
        expected = f"Error: cannot connect to Redis at redis://:***@127.0.0.1:{refused_port}/0"
    else:
        urls["HUTCH_AMQP_URL"] = f"amqp://guest:guest@127.0.0.1:{refused_port}/"
        expected = f"Error: cannot connect to RabbitMQ at amqp://guest:***@127.0.0.1:{refused_port}/"
    for name, value in urls.items():
        monkeypatch.setenv(name, value)
    result = CliRunner().invoke(main, ["worker", "--workflow", "order=examples.order:OrderWorkflow"])
    assert result.exit_code == 1, result.output
    assert expected in result.output
    assert "s3cret" not in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@db:6379/0", "redis://:***@db:6379/0"),
        ("rediss://default:s3cret@db:6380/1", "rediss://default:***@db:6380/1"),
        ("amqp://guest:s3cret@mq:5672/vhost", "amqp://guest:***@mq:5672/vhost"),
        ("redis://:s3:c@r@et@db/0", "redis://:***@db/0"),  # ":" and "@" in the password hide it whole
        ("redis://db/0?password=s3cret&db=1", "redis://db/0?password=***&db=1"),  # redis-py's query form
        ("redis://:s3cret@[::1/0", "redis://***@[::1/0"),  # unparseable: everything before the host
        ("redis://db:6379/0", "redis://db:6379/0"),
        ("amqp://guest@mq/", "amqp://guest@mq/"),
        ("", ""),
    ],
)
def test_one_redaction_hides_every_password_form_wherever_a_url_is_shown(url: str, shown: str) -> None:
    assert redact_url(url) == shown
    assert Settings().redacted(url) == shown  # what hutch worker, gateway and dev print at start
    if url:
        assert RabbitMQTransport(url, namespace="tt-redact")._display_url == shown  # the broker's messages


@pytest.mark.parametrize(
    ("urls", "shown"),
    [
        ("amqp://guest:s3cret@mq1:5672,mq2:5672/vh", "amqp://guest:***@mq1:5672,mq2:5672/vh"),
        ("amqp://u:s3cret@mq1/vh,amqp://u:s3cret@mq2/vh", "amqp://u:***@mq1/vh,amqp://u:***@mq2/vh"),
        ("amqp://u:s3c,ret@mq1/", "amqp://u:***@mq1/"),  # an unencoded comma in the password hides it whole
    ],
)
def test_several_broker_urls_are_redacted_each(urls: str, shown: str) -> None:
    assert Settings().redacted(urls) == shown
    assert RabbitMQTransport(urls, namespace="tt-redact")._display_url == shown


async def test_a_broker_cluster_starts_on_any_live_node(refused_port: int, amqp_url: str) -> None:
    dead = f"amqp://guest:s3cret@127.0.0.1:{refused_port}/"
    connection = await connect([dead, amqp_url], shuffle=False)  # the dead node first: it is skipped
    try:
        assert connection.node == redact_url(amqp_url)
    finally:
        await connection.close()
    plain = await connect_once(f"{dead},{amqp_url}")  # the same for tools that want no reconnects
    await plain.close()
    namespace = unique("tt-any-node")
    for order in ([dead, amqp_url], [amqp_url, dead]):
        transport = RabbitMQTransport(order, partitions=1, namespace=namespace)
        await transport.start()
        await transport.close()
    await _delete_topology(amqp_url, namespace)


async def test_a_broker_cluster_with_no_live_node_is_broker_unavailable_naming_each(refused_port: int) -> None:
    urls = f"amqp://guest:s3cret@127.0.0.1:{refused_port},127.0.0.2:{refused_port}/"
    with pytest.raises(BrokerUnavailable) as caught:
        await RabbitMQTransport(urls, namespace="tt-refused").start()
    message = str(caught.value)
    assert message.startswith("cannot connect to any RabbitMQ node of ")
    assert f"amqp://guest:***@127.0.0.1:{refused_port}/: " in message
    assert f"amqp://guest:***@127.0.0.2:{refused_port}/: " in message
    assert "s3cret" not in message


def test_a_malformed_broker_url_list_is_a_usage_error_without_the_password() -> None:
    with pytest.raises(InvalidInputError, match="percent-encode a comma") as caught:
        parse_amqp_urls("amqp://guest:s3c,r@et@mq/")
    assert "s3c" not in str(caught.value)


async def _delete_topology(url: str, namespace: str) -> None:
    transport = RabbitMQTransport(url, partitions=1, namespace=namespace)
    await transport.start()
    try:
        await transport.delete_topology()
    finally:
        await transport.close()
