from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class _ReturnValueMarker:
    def __repr__(self) -> str:
        return "ReturnValue"


RETURN_VALUE_MARKER = _ReturnValueMarker()

if TYPE_CHECKING:
    ReturnValue = Annotated[T, RETURN_VALUE_MARKER]
else:

    class ReturnValue:
        """Annotate one field of a callback's input model with ``ReturnValue[T]``: it
        receives the result of the task (or the previous chain step). Without such a field
        the result arrives in ``mageflow_results``."""

        def __class_getitem__(cls, item: Any) -> Any:
            return Annotated[item, RETURN_VALUE_MARKER]


def return_value_field(model: type[BaseModel] | None) -> str:
    """The field of ``model`` annotated ``ReturnValue[...]``, else ``"mageflow_results"``."""
    if model is not None:
        for name, info in model.model_fields.items():
            if any(meta is RETURN_VALUE_MARKER for meta in info.metadata):
                return name
    return "mageflow_results"
