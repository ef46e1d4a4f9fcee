"""``python -m hutch.gateway.cli``: the ``hutch`` command line (as ``python -m hutch``)."""

from hutch.gateway.cli import main

main()
