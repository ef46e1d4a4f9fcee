"""Hutch: durable workflows for Python on RabbitMQ and Redis.

Write a workflow as a subclass of :class:`WorkflowEntrypoint` and run it with
:func:`connect`. Every public name lives here.
"""

from engine.client import Client, EventAccepted, Instance, InstancePage, WorkflowClient
from engine.config import Limits, RetryConfig, StepConfig
from engine.connect import Connection, connect
from engine.context import StepContext, StepInfo
from engine.entrypoint import Env, WorkflowEntrypoint
from engine.errors import (
    BatchTooLarge,
    BrokerUnavailable,
    EventTimeoutError,
    HutchError,
    IllegalTransition,
    InstanceAlreadyExists,
    InstanceNotFound,
    InvalidDuration,
    InvalidInputError,
    InvalidInstanceId,
    InvalidStepName,
    InvalidWorkflowName,
    NondeterminismError,
    NonRetryableError,
    NotSerializable,
    PayloadTooLarge,
    ServiceUnavailable,
    SleepTooLong,
    StepError,
    StepFailedError,
    StepLimitExceeded,
    StepResultNotSerializable,
    StepResultTooLarge,
    StepTimeoutError,
    StoreUnavailable,
    WaitTimeout,
    WorkerLostError,
    WorkflowCodeError,
    WorkflowNotFound,
)
from engine.events import ReceivedEvent, WorkflowEvent
from engine.settings import Settings
from engine.status import AttemptDetail, ErrorInfo, InstanceDetail, InstanceStatus, Status, StepDetail
from engine.step import RollbackStep, StepFunction, WorkflowStep

__all__ = [
    "AttemptDetail",
    "BatchTooLarge",
    "BrokerUnavailable",
    "Client",
    "Connection",
    "Env",
    "ErrorInfo",
    "EventAccepted",
    "EventTimeoutError",
    "HutchError",
    "IllegalTransition",
    "Instance",
    "InstanceAlreadyExists",
    "InstanceDetail",
    "InstanceNotFound",
    "InstancePage",
    "InstanceStatus",
    "InvalidDuration",
    "InvalidInputError",
    "InvalidInstanceId",
    "InvalidStepName",
    "InvalidWorkflowName",
    "Limits",
    "NonRetryableError",
    "NondeterminismError",
    "NotSerializable",
    "PayloadTooLarge",
    "ReceivedEvent",
    "RetryConfig",
    "RollbackStep",
    "ServiceUnavailable",
    "Settings",
    "SleepTooLong",
    "Status",
    "StepConfig",
    "StepContext",
    "StepDetail",
    "StepError",
    "StepFailedError",
    "StepFunction",
    "StepInfo",
    "StepLimitExceeded",
    "StepResultNotSerializable",
    "StepResultTooLarge",
    "StepTimeoutError",
    "StoreUnavailable",
    "WaitTimeout",
    "WorkerLostError",
    "WorkflowClient",
    "WorkflowCodeError",
    "WorkflowEntrypoint",
    "WorkflowEvent",
    "WorkflowNotFound",
    "WorkflowStep",
    "connect",
]
