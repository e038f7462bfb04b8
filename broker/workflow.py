"""What every allowlisted workflow has, whatever serves it; each kind adds its own options in
``backends/<kind>/workflow.py`` by subclassing ``Workflow``.

A workflow is a frozen pydantic model with ``extra="forbid"``: the workflow file is validated by
the very class the broker then reads, and a key no kind knows is named with the closest known
one. ``Workflow(kind=…, …)`` still builds the right kind's model, so code and tests that built
the old flat ``Workflow`` keep working; reading another kind's option (``wf.server`` on a hosted
workflow) gives that option's default, as the flat class did.
"""

import math
import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from .declare import Says, Text, pairs, strict_whole

Primitive = str | int | float | bool
NAME_RE = re.compile(r"[a-z0-9_-]{1,64}")


def is_primitive(value: Any) -> bool:
    """A TOML value a claim or a state variable may hold: a string, number or boolean."""
    return isinstance(value, str | int | bool) or (
        isinstance(value, float) and math.isfinite(value)
    )


def _name(value: str) -> str:
    if not NAME_RE.fullmatch(value):
        raise ValueError("must be 1-64 of a-z 0-9 _ -, got {got}")
    return value


def _require(value: Any) -> Any:
    value = pairs(value)
    if not isinstance(value, tuple):
        raise ValueError("must be a table of claim = value")
    out, bad = [], []
    for claim, want in value:
        if isinstance(want, list | tuple) and want and all(is_primitive(v) for v in want):
            out.append((claim, tuple(want)))
        elif is_primitive(want):
            out.append((claim, want))
        else:
            bad.append(f"require.{claim} must be a string, number, boolean or a list of them")
    if bad:
        raise ValueError("\n".join(bad))
    return tuple(out)


Require = Annotated[
    tuple[tuple[str, Any], ...],
    BeforeValidator(_require),
    Says(" must be a table of claim = value"),
]


class Workflow(BaseModel):
    """One allowlisted workflow. ``kind`` says which backend serves it (set by each subclass)."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    #: kind → its model, filled as each kind's module defines its subclass
    kinds: ClassVar[dict[str, type["Workflow"]]] = {}
    #: every kind's optional options and their defaults (what another kind reads them as)
    others: ClassVar[dict[str, Any]] = {}
    #: the key of the workflow file that names this kind's target (``id``, ``server``, ``agent``)
    target_key: ClassVar[str] = ""

    name: Annotated[str, AfterValidator(_name)]
    label: Text = ""
    """Shown in the test page's list; default: the name."""
    kind: str = "hosted"
    require: Require = ()
    """Claims the user's token must carry: claim = value, or a list of accepted values."""
    expires_after: strict_whole(1, 600, "seconds") | None = None
    """Seconds a minted session lives."""
    max_requests_per_minute: strict_whole(1) | None = None
    """ChatKit requests per minute per session."""

    def __new__(cls, *args: Any, **data: Any) -> "Workflow":
        """``Workflow(kind="gateway", …)`` builds a ``GatewayWorkflow``: the old flat call."""
        if cls is Workflow:
            cls = Workflow.kinds.get(data.get("kind", "hosted"), cls)
        return super().__new__(cls)

    @classmethod
    def __pydantic_init_subclass__(cls, **kw: Any) -> None:
        super().__pydantic_init_subclass__(**kw)
        Workflow.kinds[cls.model_fields["kind"].default] = cls
        for name, info in cls.model_fields.items():
            if name not in Workflow.model_fields:
                default = (
                    None if info.is_required() else info.get_default(call_default_factory=True)
                )
                Workflow.others.setdefault(name, default)

    @model_validator(mode="before")
    @classmethod
    def _label(cls, data: Any) -> Any:
        if isinstance(data, dict) and not data.get("label") and isinstance(data.get("name"), str):
            data = {**data, "label": data["name"]}
        return data

    @property
    def target(self) -> str:
        """What serves it: the ``wf_`` id, the server URL or the agent's import path."""
        return str(getattr(self, self.target_key, "") or "")

    def __getattr__(self, name: str) -> Any:
        """Another kind's option reads as its default (``wf.id`` is None on a gateway)."""
        if name in Workflow.others:
            return Workflow.others[name]
        return super().__getattr__(name)  # type: ignore[misc]


__all__ = ["NAME_RE", "Primitive", "Workflow", "is_primitive"]
