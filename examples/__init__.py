"""Runnable example workflows; each module's docstring shows how to run it with ``hutch run``."""
