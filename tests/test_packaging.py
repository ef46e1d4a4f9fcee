"""The distribution installs one import name, ``hutch`` (SPEC §1): a user's own ``engine`` or
``gateway`` module cannot shadow Hutch, and ``python -m hutch`` is the command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import hutch
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("HUTCH_")}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_a_users_own_engine_and_gateway_modules_do_not_shadow_hutch(tmp_path: Path) -> None:
    for name in ("engine", "broker", "consumers", "gateway"):
        (tmp_path / f"{name}.py").write_text(f"WHO = 'the user\\'s own {name}'\n")
    code = (
        "import asyncio, engine, gateway, hutch\n"
        "from hutch import WorkflowEntrypoint, connect\n"
        "class Hello(WorkflowEntrypoint):\n"
        "    async def run(self, event, step):\n"
        "        return await step.do('greet', lambda: 'hi ' + event.payload['name'])\n"
        "async def main():\n"
        "    async with connect({'hello': Hello}) as client:\n"
        "        instance = await client.workflow('hello').create(params={'name': 'ada'})\n"
        "        print((await instance.wait(timeout=30)).output, engine.WHO, gateway.WHO)\n"
        "asyncio.run(main())\n"
    )
    result = _run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hi ada the user's own engine the user's own gateway"


def test_python_dash_m_hutch_is_the_command_line(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "hutch", "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert hutch.__version__ in result.stdout


@pytest.mark.slow
def test_the_wheel_holds_one_top_level_package(tmp_path: Path) -> None:
    source = tmp_path / "src"  # a copy: building in the checkout would write into its build/
    for name in ("engine", "broker", "consumers", "gateway"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stdout + build.stderr
    (wheel,) = tmp_path.glob("hutch-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        requires = [line for line in archive.read(metadata).decode().splitlines() if line.startswith("Requires-Dist:")]
    top = {name.split("/", 1)[0] for name in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"hutch"}
    for expected in (
        "hutch/py.typed",
        "hutch/store/commit.lua",
        "hutch/broker/names.py",
        "hutch/gateway/cli/__init__.py",
    ):
        assert expected in names
    # /docs and /redoc load Swagger UI and ReDoc from the installed fastapi-offline, not a CDN
    # (hutch.gateway.api.docs): an install from the wheel must bring it along.
    assert any(line.split(":", 1)[1].strip().startswith("fastapi-offline") for line in requires), requires
