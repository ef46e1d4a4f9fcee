"""Message envelopes, partitioning and transports (in-process; RabbitMQ)."""

from broker.dispatch import BrokerDispatcher
from broker.envelopes import Control, EventReceived, InstanceCreated, Message, PoisonMessage, Redrive, TimerFired
from broker.partitioning import partition_of
from broker.transports.base import DeadLetter, Delivery, Outgoing, PartitionListener, Subscription, Transport
from broker.transports.inprocess import InProcessTransport
from broker.transports.rabbitmq import RabbitMQTransport

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
