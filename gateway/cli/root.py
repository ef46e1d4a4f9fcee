"""The ``hutch`` click group: every command, the server ones imported only when they run."""

from __future__ import annotations

import click
import hutch
from hutch.gateway.cli.events import events
from hutch.gateway.cli.instances import instances
from hutch.gateway.cli.lazy import LazyGroup
from hutch.gateway.cli.run import run
from hutch.gateway.cli.workflows import workflows


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"]},
    lazy_subcommands={
        "admin": "hutch.gateway.cli.admin:admin",
        "dev": "hutch.gateway.cli.dev:dev",
        "gateway": "hutch.gateway.cli.gateway:gateway",
        "worker": "hutch.gateway.cli.worker:worker",
    },
)
# hutch.__version__: the installed distribution's, as pyproject.toml declared it at install time.
@click.version_option(hutch.__version__, prog_name="hutch", message="%(prog)s %(version)s")
def main() -> None:
    """Hutch: durable workflows on RabbitMQ and Redis.

    \b
    Local:     hutch run, hutch dev
    Servers:   hutch worker, hutch gateway
    Operating: hutch admin repartition --to N
    REST API:  hutch workflows, hutch instances, hutch events
               (--url / HUTCH_URL, default http://127.0.0.1:8787; --token / HUTCH_TOKEN)
    """


for _command in (run, workflows, instances, events):
    main.add_command(_command)
