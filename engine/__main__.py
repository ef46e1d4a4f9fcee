"""``python -m hutch``: the ``hutch`` command line."""

from hutch.gateway.cli import main

if __name__ == "__main__":
    main()
