"""Hypothesis strategies for ChatKit requests, built from chatkit-python's own request types.

``valid_requests(ids)`` walks the pydantic models of ``chatkit.types.ChatKitReq`` (each
request type, its params, the message input and its content parts, through Literal, unions,
lists, dicts and nested models) and draws JSON every one of which chatkit-python parses —
with thread, item and attachment ids taken from ``ids`` (real ones, so the broker can answer
200) or made up (its 404s). ``is_valid`` says whether a body parses, so a test can report
how many of its bodies were valid requests.
"""

from __future__ import annotations

import enum
import types
import typing
import warnings
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel, TypeAdapter, ValidationError

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)  # chatkit.widgets at import
    from chatkit.types import ChatKitReq

REQUEST: TypeAdapter[Any] = TypeAdapter(ChatKitReq)
REQUEST_TYPES: tuple[type[BaseModel], ...] = typing.get_args(typing.get_args(ChatKitReq)[0])

_ID_FIELDS = {"thread_id": "thread", "item_id": "item", "attachment_id": "attachment"}
json_scalars = st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=12)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=6,
)


def is_valid(body: object) -> bool:
    """Whether chatkit-python parses ``body`` as a request."""
    try:
        REQUEST.validate_python(body)
    except ValidationError:
        return False
    return True


def valid_requests(ids: Mapping[str, Sequence[str]]) -> st.SearchStrategy[dict[str, Any]]:
    """Any ChatKit request, as JSON; ``ids`` maps "thread", "item", "attachment" to known ids,
    and "doomed thread" to the only ones ``threads.delete`` may name (so that the others
    live on for the rest of the run)."""
    strategies = []
    for model in REQUEST_TYPES:
        own = ids
        if model.model_fields["type"].default == "threads.delete":
            own = {**ids, "thread": ids.get("doomed thread", ())}
        strategies.append(_model(model, own))
    return st.one_of(*strategies).map(
        lambda req: {k: v for k, v in req.items() if k != "metadata" or v}
    )


def _id(kind: str, ids: Mapping[str, Sequence[str]]) -> st.SearchStrategy[str]:
    """A known id four times in five (the broker can answer it), else a made-up one (404)."""
    made_up = [f"{kind[:3]}_{'0' * 16}"]
    return st.sampled_from(list(ids.get(kind, ())) * 4 + made_up)


def _model(model: type[BaseModel], ids: Mapping[str, Sequence[str]]) -> st.SearchStrategy[Any]:
    hints = typing.get_type_hints(model, include_extras=True)
    required: dict[str, st.SearchStrategy[Any]] = {}
    optional: dict[str, st.SearchStrategy[Any]] = {}
    for name, field in model.model_fields.items():
        key = field.alias or name
        if name in _ID_FIELDS:
            strategy = _id(_ID_FIELDS[name], ids)
        elif name == "item_ids":
            strategy = st.lists(_id("item", ids), min_size=1, max_size=3)
        elif name == "attachments":  # uploads are off in the workflows fuzzed: none, or 404
            strategy = (
                st.lists(_id("attachment", ids), max_size=1) if "attachment" in ids else st.just([])
            )
        else:
            ann = hints.get(name, field.annotation)
            if isinstance(ann, typing.TypeVar):  # a generic model's parameter (Action[str, Any])
                ann = field.annotation
            strategy = _annotation(ann, ids)
        # a discriminator (`type`) has a default, but the union needs it to tell types apart
        (required if field.is_required() or name == "type" else optional)[key] = strategy
    return st.fixed_dictionaries(required, optional=optional)


def _annotation(ann: Any, ids: Mapping[str, Sequence[str]]) -> st.SearchStrategy[Any]:
    origin = typing.get_origin(ann)
    args = typing.get_args(ann)
    if origin is typing.Annotated:
        return _annotation(args[0], ids)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of(*(_annotation(a, ids) for a in args))
    if origin in (list, Sequence, tuple):
        return st.lists(_annotation(args[0], ids) if args else json_values, max_size=2)
    if origin in (dict, Mapping):
        values = _annotation(args[1], ids) if len(args) == 2 else json_values
        return st.dictionaries(st.text(max_size=8), values, max_size=2)
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return _model(ann, ids)
    if isinstance(ann, type) and issubclass(ann, enum.Enum):
        return st.sampled_from([m.value for m in ann])
    if ann is type(None):
        return st.none()
    if ann is str:
        return st.text(max_size=20)
    if ann is bool:
        return st.booleans()
    if ann is int:
        return st.integers(0, 50)
    if ann is float:
        return st.floats(0, 100, allow_nan=False)
    if ann is datetime:
        return st.datetimes().map(lambda d: d.isoformat())
    return json_values  # Any, and what a model leaves open
