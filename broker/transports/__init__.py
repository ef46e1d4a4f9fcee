"""The message transport seam (base.py) and its implementations: in-process and RabbitMQ."""
