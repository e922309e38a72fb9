"""Building a task's input from a published payload, and JSON checks."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticSerializationError, to_jsonable_python

from mageflow.errors import PayloadNotSerializableError

ERROR_FIELD = "mageflow_error"


def _not_json(what: str, exc: Exception) -> PayloadNotSerializableError:
    return PayloadNotSerializableError(
        f"{what} is not JSON-serialisable ({exc}); pass dicts, lists, strings, numbers, "
        "booleans, None or pydantic models"
    )


def to_jsonable(value: Any, what: str) -> Any:
    """``value`` (pydantic models, dicts, lists, datetimes ...) as plain JSON data."""
    try:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return to_jsonable_python(value)
    except (PydanticSerializationError, TypeError, ValueError) as exc:
        raise _not_json(what, exc) from exc


def dumps(data: Any, what: str) -> str:
    """Compact JSON of plain data; NaN and non-string keys are refused."""
    try:
        return json.dumps(data, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise _not_json(what, exc) from exc


def to_json(value: Any, what: str) -> str:
    """Serialise ``value`` to compact JSON. Raises :class:`PayloadNotSerializableError`
    naming ``what`` when it cannot."""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    return dumps(to_jsonable(value, what), what)


def message_json(message: Any, what: str = "the message") -> str | None:
    """A run message as a JSON object string (``None`` for no message)."""
    if message is None:
        return None
    if not isinstance(message, (BaseModel, Mapping)):
        raise PayloadNotSerializableError(
            f"{what} must be a mapping or a pydantic model, not {type(message).__name__}"
        )
    return to_json(message, what)


def build_input(
    payload: Mapping[str, Any], kwargs: Mapping[str, Any], ret_field: str
) -> dict[str, Any]:
    """Merge, lowest precedence first: inherited messages (swarm/chain), the signature's
    kwargs, the signature's own run message; then the previous result and the error."""
    data: dict[str, Any] = {}
    layers = payload.get("in")
    for layer in layers if isinstance(layers, list) else []:
        if isinstance(layer, Mapping):
            data.update(layer)
    data.update(kwargs)
    own = payload.get("own")
    if isinstance(own, Mapping):
        data.update(own)
    if "ret" in payload:
        data[ret_field] = payload["ret"]
    if "err" in payload:
        data[ERROR_FIELD] = payload["err"]
    return data


def error_dict(exc: BaseException) -> dict[str, str]:
    """How an error is stored and shown: ``{"type": ..., "message": ...}``."""
    return {"type": type(exc).__name__, "message": str(exc)}


def error_json(exc: BaseException) -> str:
    return json.dumps(error_dict(exc), separators=(",", ":"))
