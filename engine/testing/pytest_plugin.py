"""The pytest plugin installed with Hutch (the ``hutch`` entry in ``pytest11``): workflow test fixtures.

* ``hutch_workflows``: the workflows ``hutch_env`` runs — override it in a ``conftest.py`` or a
  test module (default: the ``[[workflows]]`` of ``hutch.toml``).
* ``hutch_env``: a started :class:`~engine.testing.TestEnv` for the test, closed afterwards.
* ``hutch_env_factory``: ``env = await hutch_env_factory(workflows, **options)`` for tests that
  need other options (``start_time``, ``resources``...) or several environments.

The fixtures are async and need pytest-asyncio; without it they fail with an install hint
instead of breaking pytest for projects that do not test workflows.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from hutch.settings import Settings
from hutch.testing.env import TestEnv
from hutch.versions import Workflows

EnvFactory = Callable[..., Awaitable[TestEnv]]


def _async_fixture(fn: Callable[..., Any]) -> Any:
    """``pytest_asyncio.fixture(fn)``, or a fixture that fails with an install hint without pytest-asyncio."""
    try:
        pytest_asyncio = importlib.import_module("pytest_asyncio")
    except ImportError:  # pragma: no cover - exercised only where pytest-asyncio is missing

        def missing() -> None:
            pytest.fail(f"the {fn.__name__} fixture is async and needs pytest-asyncio: pip install pytest-asyncio")

        missing.__doc__ = fn.__doc__
        return pytest.fixture(name=fn.__name__)(missing)
    return pytest_asyncio.fixture(fn)


@pytest.fixture
def hutch_workflows() -> Workflows:
    """The workflows ``hutch_env`` runs: override this fixture (default: hutch.toml's ``[[workflows]]``)."""
    return Settings().workflow_classes()


@_async_fixture
async def hutch_env(hutch_workflows: Workflows) -> AsyncIterator[TestEnv]:
    """A started :class:`~engine.testing.TestEnv` running ``hutch_workflows``, closed after the test."""
    async with TestEnv(hutch_workflows) as env:
        yield env


@_async_fixture
async def hutch_env_factory() -> AsyncIterator[EnvFactory]:
    """A factory of started environments, ``await factory(workflows, **options)``; all closed after the test."""
    envs: list[TestEnv] = []

    async def make(workflows: Workflows, **options: Any) -> TestEnv:
        env = TestEnv(workflows, **options)
        envs.append(env)
        return await env.start()

    yield make
    for env in reversed(envs):
        await env.close()
