"""The compose stack (issue 14 item 5), checked statically (no Docker engine runs here): the gateway and
a Prometheus scrape of it and of every worker, one image built once, every published port on the
loopback interface, the gateway's token required, and a ``.dockerignore`` that keeps the build context
small. ``.ci/run`` also runs ``docker-compose config``; the last test does so here when it is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "compose"
HUTCH_SERVICES = {"gateway", "worker-1", "worker-2"}


def _load(path: Path) -> dict[str, Any]:
    # safe_load resolves the `<<: *anchor` merge keys the compose file uses, as compose does.
    loaded = yaml.safe_load(path.read_text())
    assert isinstance(loaded, dict)
    return loaded


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    services: dict[str, dict[str, Any]] = _load(COMPOSE / "docker-compose.yml")["services"]
    return services


def _workers(services: dict[str, dict[str, Any]]) -> list[str]:
    return sorted(name for name, s in services.items() if s.get("command", [None, None])[:2] == ["hutch", "worker"])


def test_the_gateway_serves_the_api_on_loopback_with_a_required_token(services: dict[str, dict[str, Any]]) -> None:
    gateway = services["gateway"]
    assert gateway["command"][:2] == ["hutch", "gateway"]
    port = gateway["command"][gateway["command"].index("--port") + 1]
    assert gateway["ports"] == [f"127.0.0.1:{port}:{port}"]
    # From the environment, never a literal token in the file; compose stops when it is unset.
    assert gateway["environment"]["HUTCH_GATEWAY_TOKENS"].startswith("${HUTCH_GATEWAY_TOKEN:?")
    assert gateway["environment"]["HUTCH_REDIS_URL"] == "redis://redis:6379/0"
    assert "/readyz" in " ".join(gateway["healthcheck"]["test"])


def test_prometheus_scrapes_the_gateway_and_every_worker(services: dict[str, dict[str, Any]]) -> None:
    prometheus = services["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]
    config = _load(COMPOSE / "prometheus.yml")
    targets = {
        target: job.get("metrics_path", "/metrics")
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    gateway_port = services["gateway"]["command"][services["gateway"]["command"].index("--port") + 1]
    assert targets[f"gateway:{gateway_port}"] == "/metrics"
    workers = _workers(services)
    assert len(workers) >= 2
    for name in workers:
        env = services[name]["environment"]
        # Listening beyond the container's loopback, or Prometheus could not reach it.
        assert env["HUTCH_METRICS_HOST"] == "0.0.0.0"
        assert targets[f"{name}:{env['HUTCH_METRICS_PORT']}"] == "/metrics", f"{name} is not scraped"
        assert "ports" not in services[name], "a worker's metrics port is for the compose network only"


def test_one_image_is_built_once_and_run_by_the_gateway_and_the_workers(services: dict[str, dict[str, Any]]) -> None:
    built = [name for name, s in services.items() if "build" in s]
    assert built == ["gateway"]
    assert services["gateway"]["build"] == {"context": "..", "dockerfile": "compose/Dockerfile"}
    image = services["gateway"]["image"]
    assert {services[name]["image"] for name in HUTCH_SERVICES | set(_workers(services))} == {image}
    assert not any(s["image"] == image for name, s in services.items() if name not in HUTCH_SERVICES)


def test_every_published_port_listens_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = [(name, str(port)) for name, s in services.items() for port in s.get("ports", [])]
    assert len(published) >= 8  # redis, rabbitmq x2, jaeger x3, gateway, prometheus
    assert {name for name, _ in published} >= {"gateway", "prometheus", "redis", "rabbitmq"}
    exposed = [(name, port) for name, port in published if not port.startswith("127.0.0.1:")]
    assert not exposed, f"published on every interface: {exposed}"


def test_dockerignore_keeps_vcs_virtualenvs_tests_and_caches_out_of_the_build_context() -> None:
    patterns = {
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip()[:1] not in ("", "#")
    }
    for needed in (".git", ".venv", "tests", "build", "**/__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"):
        assert needed in patterns, f".dockerignore does not exclude {needed}"
    # What the Dockerfile copies must stay in the context.
    copied = [
        source
        for line in (COMPOSE / "Dockerfile").read_text().splitlines()
        if line.startswith("COPY ")
        for source in line.split()[1:-1]
    ]
    assert "engine" in copied and "requirements-dev.lock" in copied
    for source in copied:
        assert source not in patterns and source.rstrip("/") not in patterns, f"{source} is copied but ignored"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
def test_docker_compose_accepts_the_file_and_requires_the_gateway_token() -> None:
    command = ["docker-compose", "-f", str(COMPOSE / "docker-compose.yml"), "config", "--quiet"]
    env = {k: v for k, v in os.environ.items() if k != "HUTCH_GATEWAY_TOKEN"}
    valid = subprocess.run(command, env={**env, "HUTCH_GATEWAY_TOKEN": "t"}, capture_output=True, text=True, timeout=60)
    assert valid.returncode == 0, valid.stderr
    missing = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "set HUTCH_GATEWAY_TOKEN" in missing.stderr
