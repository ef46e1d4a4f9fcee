"""``python -m hutch.gateway.cli``: the ``hutch`` command line (as ``python -m hutch``)."""

from hutch.gateway.cli import main

if __name__ == "__main__":  # imported by tools that walk the package, it must not run the CLI
    main()
