"""Every error a user can cause, one class each, with a message that says what to do."""

from __future__ import annotations

from collections.abc import Iterable


class MageflowError(Exception):
    """Base class of all MageFlow errors."""


class ConfigurationError(MageflowError):
    """Settings that cannot work together or are out of range (unknown option, missing
    adapter setting, a TTL that is not a positive number, a URL of another scheme)."""


class InvalidSwarmConfigError(ConfigurationError, ValueError):
    """A :class:`~mageflow.SwarmConfig` value out of range (``max_concurrency=0``)."""


class UnknownBackendError(ConfigurationError):
    """The requested backend is not installed."""

    def __init__(self, name: str, installed: Iterable[str]) -> None:
        import difflib

        names = sorted(installed)
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        super().__init__(
            f"no MageFlow backend named {name!r}; installed: {', '.join(names) or 'none'}."
            f"{hint} Install one with `pip install mageflow-<backend>`."
        )
        self.name = name
        self.installed = names


class CapabilityNotSupportedError(MageflowError):
    """The backend does not offer an optional capability that was asked for."""


class TaskNotRegisteredError(MageflowError):
    """A task name that no ``@mf.task`` registered in this process."""

    def __init__(self, name: str, known: Iterable[str]) -> None:
        names = sorted(known)
        shown = ", ".join(names[:20]) + (" ..." if len(names) > 20 else "")
        super().__init__(
            f"task {name!r} is not registered; register it with @mf.task(name={name!r}) "
            f"or import the module that does. Registered: {shown or 'none'}"
        )
        self.name = name


class TaskAlreadyRegisteredError(MageflowError):
    """Two different functions registered under one task name."""


class InvalidRetryPolicyError(MageflowError, ValueError):
    """A task's ``retries=`` or ``backoff=`` that cannot work (negative, not a number,
    a cap below the first delay ...). Raised when the task is registered."""


class StoreUnavailableError(MageflowError):
    """Redis could not be reached, or was busy running a long script (``BUSY``): nothing
    of the call ran. The URL is shown without its password."""


class EngineError(MageflowError):
    """The engine's script failed on a workflow (a bug: report it with the workflow key)."""


class PublishError(MageflowError):
    """The task manager refused a publish after retries. The work is recorded: the
    reconciler (any worker, or ``mageflow reconcile``) sends it once the broker is back."""


class WorkflowTooDeepError(MageflowError):
    """A workflow nests deeper than the engine supports."""


class InvalidOptionsError(MageflowError, ValueError):
    """A priority, delay or start time out of range, or given twice."""


class SignatureNotFoundError(MageflowError, KeyError):
    """No signature, chain or swarm is stored under this key (unknown or expired)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "signature not found"


class InvalidKeyError(SignatureNotFoundError, ValueError):
    """A string that is not a signature key MageFlow hands out (``sig.key``): nothing is
    read or written for it."""


class InvalidTaskError(MageflowError, TypeError):
    """Something given where a task is expected (chain step, swarm item, callback) that
    is neither a signature, a ``@mf.task`` function nor a task name."""


class InvalidNameError(MageflowError, ValueError):
    """A task, chain or swarm name that cannot be stored (empty, not text, or not
    encodable as UTF-8, e.g. a lone surrogate)."""


class NotInTaskError(MageflowError, LookupError):
    """``mageflow.current_task()`` was called outside a running MageFlow task."""


class InvalidIdentifiersError(MageflowError, ValueError):
    """``task_identifiers`` (or a lookup by them) that are not a mapping of non-empty
    string names to JSON values."""


class SwarmClosedError(MageflowError):
    """Adding a task to a swarm that was closed."""


class WorkflowFinishedError(MageflowError):
    """A lifecycle operation on a workflow that already finished (done, failed, canceled)."""


class WorkflowNotFailedError(MageflowError):
    """``retry`` on a workflow that has not failed (pending, running, held, done,
    canceled): only a failed workflow re-runs."""


class WorkflowBusyError(MageflowError):
    """``retry`` while error callbacks of the failure are still dispatched or running:
    retry once they have finished (re-arming them now would lose their run)."""


class SignatureInUseError(MageflowError):
    """A signature given to a chain/swarm/callback list that already belongs to a workflow
    or already ran. Sign a new one instead."""


class NotATaskError(MageflowError, TypeError):
    """A pre-signed signature where one task is expected (``swarm_of``, ``add_tasks``)."""


class PayloadNotSerializableError(MageflowError, TypeError):
    """A message, keyword or result that is not JSON-serialisable."""


class InvalidTaskInputError(MageflowError, ValueError):
    """A task's input failed its ``input_validator``; the message names the fields."""


class NonRetryableError(MageflowError):
    """Raised by the core's wrapper when retrying cannot help (invalid input, result not
    JSON, unknown task). Adapters map it to their task manager's "do not retry"."""


class TaskFailedError(MageflowError):
    """``aio_run`` waited for a signature that failed; carries the recorded error."""

    def __init__(self, key: str, error: dict[str, str] | None) -> None:
        err = error or {}
        super().__init__(
            f"{key} failed: {err.get('type', 'Error')}: {err.get('message', '')}".rstrip(": ")
        )
        self.key = key
        self.error_type = err.get("type")
        self.error_message = err.get("message")


class TaskTimeoutError(MageflowError, TimeoutError):
    """An attempt ran past the task's ``timeout``: an ordinary failure (retried, then the
    error callbacks fire)."""


class WaitTimeoutError(MageflowError, TimeoutError):
    """``aio_run`` / ``wait`` gave up before the signature finished."""


class InvalidGraphError(MageflowError, ValueError):
    """A graph or branch that cannot be built (a node name that is not text, an edge
    given as both required and optional, a branch without cases). Nothing is written."""


class UnknownDependencyError(InvalidGraphError):
    """A graph node depends on a name that is not a node of the graph."""


class GraphCycleError(InvalidGraphError):
    """A graph's dependencies form a cycle (a node waits, through others, for itself)."""
