"""Long-running workers: partition consumers, step execution, timers."""

from hutch.consumers.worker import Worker

__all__ = ["Worker"]
