"""The ``hutch`` command line, modelled on ``wrangler workflows``: nouns, then verbs.

Servers and local runs:

* ``hutch run FILE[:Class] --params JSON`` (:mod:`.run`) runs one instance to completion on the
  embedded runtime and shows its progress live (:mod:`.progress_view`);
* ``hutch dev`` (:mod:`.dev`), ``hutch gateway`` (:mod:`.gateway`) and ``hutch worker``
  (:mod:`.worker`) run until SIGINT/SIGTERM;
* ``hutch admin repartition`` (:mod:`.admin`) changes a stopped deployment's partition count.

Clients of a gateway's REST API (``--url``/``HUTCH_URL``, ``--token``/``HUTCH_TOKEN``), so they work
against ``hutch dev`` and a remote deployment alike: ``hutch workflows list|trigger`` (:mod:`.workflows`),
``hutch instances list|describe|pause|resume|terminate|restart`` (:mod:`.instances`), ``hutch events
send|create-or-send`` (:mod:`.events`). Each prints a table (:mod:`.render`) or, with ``--json``, the API's ``result``
as JSON. Exit status: 0 ok, 1 the API answered with an error (404, 409, 401...), 2 bad usage or the
gateway cannot be reached, 3 a lifecycle change accepted but not applied yet (no worker applied it
within the gateway's wait).

Commands stay thin: parse the arguments (options shared between commands: :mod:`.options`), call
the API (:mod:`.remote`, :mod:`hutch.gateway.http_client`), render (:mod:`.formatting`).
Nothing outside this package imports it but ``hutch.gateway``'s re-exports.
"""

from hutch.gateway.cli.root import main

__all__ = ["main"]
