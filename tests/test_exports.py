"""The public surface: each package's ``__all__`` is pinned, importable and free of private names.

Adding a public name is a deliberate act: update the list here in the same change. Every
error class also survives a pickle round trip with its attributes (errors cross process
boundaries in thread pools, multiprocessing and test runners).
"""

from __future__ import annotations

import importlib
import importlib.metadata
import inspect
import pickle
import pkgutil
from types import ModuleType
from typing import Any

import hutch
import hutch.broker
import hutch.consumers
import hutch.errors
import hutch.testing
import pytest
from hutch.broker import PoisonMessage

ENGINE_ALL = [
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

BROKER_ALL = [
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

CONSUMERS_ALL = ["Worker"]

TESTING_ALL = [
    "InstanceHistory",
    "InstanceVerdict",
    "Modifier",
    "ReplayResult",
    "TestClock",
    "TestEnv",
    "TestInstance",
    "UnexpectedStatus",
    "VerifyReport",
    "load_history",
    "replay_history",
    "save_history",
    "verify_histories",
]

# The error types SPEC §2 (SDK, limits) and §3 (client API) name, and the brief's limit errors.
SPEC_ERRORS = [
    "HutchError",
    "NonRetryableError",
    "StepTimeoutError",
    "EventTimeoutError",
    "StepFailedError",
    "NondeterminismError",
    "InstanceNotFound",
    "InstanceAlreadyExists",
    "WorkflowNotFound",
    "InvalidInstanceId",
    "InvalidWorkflowName",
    "InvalidStepName",
    "InvalidDuration",
    "PayloadTooLarge",
    "StepResultTooLarge",
    "StepResultNotSerializable",
    "StepLimitExceeded",
    "SleepTooLong",
    "NotSerializable",
    "BatchTooLarge",
]


@pytest.mark.parametrize(
    ("module", "expected"),
    [(hutch, ENGINE_ALL), (hutch.broker, BROKER_ALL), (hutch.consumers, CONSUMERS_ALL), (hutch.testing, TESTING_ALL)],
    ids=["engine", "broker", "consumers", "testing"],
)
def test_all_is_pinned_sorted_and_importable(module: ModuleType, expected: list[str]) -> None:
    assert module.__all__ == expected, f"{module.__name__}.__all__ changed; update the pinned list deliberately"
    assert list(module.__all__) == sorted(module.__all__, key=str)
    assert len(set(module.__all__)) == len(module.__all__)
    for name in module.__all__:
        assert not name.startswith("_"), f"{module.__name__}.__all__ exports private name {name!r}"
        assert getattr(module, name, None) is not None, f"{module.__name__}.{name} is not importable"
    namespace: dict[str, Any] = {}
    exec(f"from {module.__name__} import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(expected)


def test_public_items_have_docstrings() -> None:
    for module in (hutch, hutch.broker, hutch.consumers, hutch.testing):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isclass(obj) or inspect.isfunction(obj):
                assert inspect.getdoc(obj), f"{module.__name__}.{name} has no docstring"


def test_every_error_the_spec_names_is_exported_from_engine() -> None:
    for name in SPEC_ERRORS:
        assert name in hutch.__all__, name
        cls = getattr(hutch, name)
        assert issubclass(cls, hutch.HutchError), name
        assert cls is getattr(hutch.errors, name)


def _all_engine_modules() -> list[ModuleType]:
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(hutch.__path__, "hutch.")]


# Subpackages above the engine layer: their errors are their own business.
UPPER_LAYERS = ("hutch.broker.", "hutch.consumers.", "hutch.gateway.")


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def _public_errors() -> list[type[hutch.HutchError]]:
    _all_engine_modules()  # make sure every HutchError subclass defined in engine is loaded
    classes = [c for c in _subclasses(hutch.HutchError) if not c.__name__.startswith("_")]
    return sorted([hutch.HutchError, *classes], key=lambda c: c.__name__)


def test_every_public_engine_error_is_exported_and_drawn_in_the_tree() -> None:
    tree = hutch.errors.__doc__ or ""
    for cls in _public_errors():
        if not cls.__module__.startswith("hutch.") or cls.__module__.startswith(UPPER_LAYERS):
            continue  # a subclass defined by another package (gateway, tests) is that package's business
        assert cls.__name__ in hutch.__all__, f"{cls.__module__}.{cls.__name__} is not exported from engine"
        assert getattr(hutch, cls.__name__) is cls
        assert cls.__name__ in tree, f"{cls.__name__} is missing from the tree in engine/errors.py's docstring"
        assert inspect.getdoc(cls)


# Constructor arguments for the errors whose __init__ is not just a message.
SPECIAL_ARGS: dict[str, tuple[Any, ...]] = {
    "StepFailedError": ("CardDeclined", "insufficient funds"),
    "WorkflowNotFound": ("order",),
    "InstanceNotFound": ("order", "order-42"),
    "InstanceAlreadyExists": ("order", "order-42"),
    "IllegalTransition": ("order-42", "terminate", "complete"),
    "StepNotInHistory": ("order-42", "step 'charge'#1", "running"),
    "RetryAfter": (2.5, "RetryAfter: instance order-42 asked for a pause"),
    "ChildWorkflowError": ("billing", "order-42-bill-0123456789ab", "ValueError", "declined"),
}


def _make(cls: type[hutch.HutchError]) -> hutch.HutchError:
    args = SPECIAL_ARGS.get(cls.__name__, (f"{cls.__name__}: instance order-42 broke a rule",))
    return cls(*args)


@pytest.mark.parametrize("cls", _public_errors(), ids=lambda c: c.__name__)
def test_errors_survive_a_pickle_round_trip_with_their_attributes(cls: type[hutch.HutchError]) -> None:
    err = _make(cls)
    err.extra_note = {"attempt": 3}  # type: ignore[attr-defined]  # state added after construction survives too
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is cls
    assert str(copy) == str(err) and str(copy)
    assert copy.args == err.args
    assert copy.__dict__ == err.__dict__
    for attr in ("error_name", "message", "workflow", "instance_id", "action", "status"):
        if hasattr(err, attr):
            assert getattr(copy, attr) == getattr(err, attr), attr


def test_special_error_attributes() -> None:
    failed = hutch.StepFailedError("CardDeclined", "insufficient funds")
    assert (failed.error_name, failed.message, str(failed)) == (
        "CardDeclined",
        "insufficient funds",
        "CardDeclined: insufficient funds",
    )
    missing = hutch.InstanceNotFound("order", "order-42")
    assert isinstance(missing, KeyError) and str(missing) == "instance 'order-42' of workflow 'order' not found"
    illegal = hutch.IllegalTransition("order-42", "terminate", "complete")
    assert str(illegal) == "cannot terminate instance 'order-42' since it is in status 'complete'"
    assert issubclass(hutch.WaitTimeout, TimeoutError)


def test_version_is_the_installed_distributions() -> None:
    assert hutch.__version__ == importlib.metadata.version("hutch")
    assert "__version__" not in hutch.__all__, "a dunder, read as hutch.__version__, not star-imported"


def test_poison_message_survives_a_pickle_round_trip() -> None:
    err = PoisonMessage("undecodable body (ExtraData: unpack(b) received extra data.)")
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is PoisonMessage and copy.reason == err.reason and str(copy) == str(err)
