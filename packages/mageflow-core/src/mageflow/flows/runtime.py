"""What the flows need of the application: a narrow view of :class:`mageflow.Mageflow`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from mageflow.backend.base import TaskBackend
from mageflow.engine import Engine
from mageflow.store.base import StateStore

if TYPE_CHECKING:
    from mageflow.flows.handles import Signature
    from mageflow.flows.tasks import RegisteredTask


class Runtime(Protocol):
    """The engine, store and backend a workflow runs on, and the task registry."""

    @property
    def engine(self) -> Engine: ...

    @property
    def store(self) -> StateStore: ...

    @property
    def backend(self) -> TaskBackend: ...

    @property
    def lease(self) -> float:
        """Seconds a running attempt holds its task between renewals."""
        ...

    @property
    def tasks(self) -> Mapping[str, RegisteredTask]: ...

    def task_name_of(self, value: Any) -> str:
        """The registered task name a task-like stands for."""

    async def ensure_started(self) -> None:
        """Open the backend's connections (once)."""

    async def sign(
        self,
        task: Any,
        *,
        task_identifiers: dict[str, Any] | None = None,
        success_callbacks: Sequence[Any] | Any | None = None,
        error_callbacks: Sequence[Any] | Any | None = None,
        **kwargs: Any,
    ) -> Signature:
        """A new stored signature."""

    def track(self, handle: Signature) -> None:
        """Remember a live handle so moving its workflow can repoint it."""

    def rehome(self, old_wf: str, new_key: Callable[[str], str]) -> None:
        """Repoint the live handles of ``old_wf``."""

    def start_reconciler(self) -> None:
        """Make sure this event loop runs the reconciler sweep."""
