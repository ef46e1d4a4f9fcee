"""Message envelopes, partitioning and transports (in-process; RabbitMQ)."""

from hutch.broker.dispatch import BrokerDispatcher
from hutch.broker.envelopes import Control, EventReceived, InstanceCreated, Message, PoisonMessage, Redrive, TimerFired
from hutch.broker.partitioning import partition_of
from hutch.broker.transports.base import DeadLetter, Delivery, Outgoing, PartitionListener, Subscription, Transport
from hutch.broker.transports.inprocess import InProcessTransport
from hutch.broker.transports.rabbitmq import RabbitMQTransport

__all__ = [
    "BrokerDispatcher",
    "Control",
    "DeadLetter",
    "Delivery",
    "EventReceived",
    "InProcessTransport",
    "InstanceCreated",
    "Message",
    "Outgoing",
    "PartitionListener",
    "PoisonMessage",
    "RabbitMQTransport",
    "Redrive",
    "Subscription",
    "TimerFired",
    "Transport",
    "partition_of",
]
