"""Long-running workers: partition consumers, step execution, timers."""

from consumers.worker import Worker

__all__ = ["Worker"]
