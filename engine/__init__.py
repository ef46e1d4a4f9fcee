"""Hutch: durable workflows for Python on RabbitMQ and Redis.

Write a workflow as a subclass of :class:`WorkflowEntrypoint` and run it with
:func:`connect`. Every public name lives here.
"""

import importlib.metadata

from hutch.children import InvokeConfig
from hutch.client import (
    Client,
    ControlAccepted,
    CreatedOrSent,
    EventAccepted,
    Instance,
    InstancePage,
    WorkflowClient,
)
from hutch.config import Limits, RetryConfig, StepConfig
from hutch.connect import Connection, connect
from hutch.context import StepContext, StepInfo
from hutch.entrypoint import Env, WorkflowEntrypoint
from hutch.errors import (
    BatchTooLarge,
    BlobNotFound,
    BrokerUnavailable,
    BulkJobNotFound,
    ChildWorkflowError,
    DeploymentMismatch,
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
    RepartitionRefused,
    RetryAfter,
    RollbackFailed,
    ServiceUnavailable,
    SleepTooLong,
    StepError,
    StepFailedError,
    StepLimitExceeded,
    StepNotInHistory,
    StepResultNotSerializable,
    StepResultTooLarge,
    StepTimeoutError,
    StoreUnavailable,
    TargetError,
    TerminatedWithRollback,
    WaitTimeout,
    WorkerLostError,
    WorkflowCodeError,
    WorkflowNotFound,
)
from hutch.events import ReceivedEvent, WorkflowEvent
from hutch.settings import Settings
from hutch.status import (
    AttemptDetail,
    ErrorInfo,
    InstanceDetail,
    InstanceLink,
    InstanceStatus,
    Status,
    StepDetail,
)
from hutch.step import RollbackStep, StepFunction, WorkflowStep

try:
    # The installed distribution's, so pyproject.toml stays the one place the version is written.
    __version__ = importlib.metadata.version("hutch")
except importlib.metadata.PackageNotFoundError:  # a source tree on sys.path that was never installed
    __version__ = "0+unknown"

__all__ = [
    "AttemptDetail",
    "BatchTooLarge",
    "BlobNotFound",
    "BrokerUnavailable",
    "BulkJobNotFound",
    "ChildWorkflowError",
    "Client",
    "Connection",
    "ControlAccepted",
    "CreatedOrSent",
    "DeploymentMismatch",
    "Env",
    "ErrorInfo",
    "EventAccepted",
    "EventTimeoutError",
    "HutchError",
    "IllegalTransition",
    "Instance",
    "InstanceAlreadyExists",
    "InstanceDetail",
    "InstanceLink",
    "InstanceNotFound",
    "InstancePage",
    "InstanceStatus",
    "InvalidDuration",
    "InvalidInputError",
    "InvalidInstanceId",
    "InvalidStepName",
    "InvalidWorkflowName",
    "InvokeConfig",
    "Limits",
    "NonRetryableError",
    "NondeterminismError",
    "NotSerializable",
    "PayloadTooLarge",
    "ReceivedEvent",
    "RepartitionRefused",
    "RetryAfter",
    "RetryConfig",
    "RollbackFailed",
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
    "StepNotInHistory",
    "StepResultNotSerializable",
    "StepResultTooLarge",
    "StepTimeoutError",
    "StoreUnavailable",
    "TargetError",
    "TerminatedWithRollback",
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
