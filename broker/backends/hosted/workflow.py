"""A hosted workflow's options: what ``POST /chatkit/sessions`` sends OpenAI for it.

Hosted workflows (OpenAI Agent Builder, ``wf_…``) are retired on 2026-11-30; their options
follow the API's own limits so a bad value is refused here, not at the first mint.
"""

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from ...declare import Flag, Says, Text, pairs, strict_whole
from ...workflow import Workflow, is_primitive

ID_RE = re.compile(r"wf_[A-Za-z0-9_-]{1,128}")
MAX_STATE_VARIABLES = 64


def _id(value: str) -> str:
    if not isinstance(value, str) or not ID_RE.fullmatch(value):
        raise ValueError("must be wf_ followed by 1-128 of A-Za-z0-9_-")
    return value


def _version(value: str | None) -> str | None:
    if value is not None and value.strip().lower() == "latest":
        raise ValueError(
            'version = "latest" is refused (the API accepts it, then chats fail); '
            "omit version to use the latest deployed one, or pin a number"
        )
    return value


def _state(value: Any) -> Any:
    value = pairs(value)
    if not isinstance(value, tuple):
        raise ValueError("must be a table")
    out, bad = [], []
    if len(value) > MAX_STATE_VARIABLES:
        bad.append(f"at most {MAX_STATE_VARIABLES} state_variables are allowed")
    for var, v in value:
        if len(var) > 64:
            bad.append(f"state variable names are at most 64 characters ({var[:20]}…)")
        if isinstance(v, tuple) and len(v) == 2 and v[0] == "claim":  # already parsed
            out.append((var, v))
        elif isinstance(v, str) and v.startswith("claim:") and len(v) > 6:
            out.append((var, ("claim", v[6:])))
        elif is_primitive(v):
            out.append((var, v))
        else:
            bad.append(f"state_variables.{var} must be a string, number or boolean")
    if bad:
        raise ValueError("\n".join(bad))
    return tuple(out)


class FileUpload(BaseModel):
    """ChatKit's file_upload configuration of a hosted workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    enabled: Flag = False
    max_file_size: strict_whole(1, 512, "MB") | None = None
    max_files: strict_whole(1) | None = None


class History(BaseModel):
    """ChatKit's history configuration of a hosted workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    enabled: Flag = True
    recent_threads: strict_whole(1) | None = None


class HostedWorkflow(Workflow):
    """A workflow OpenAI hosts (Agent Builder, retired 2026-11-30): the broker mints its
    sessions and ChatKit talks to OpenAI."""

    target_key = "id"
    kind: Literal["hosted"] = "hosted"
    id: Annotated[str, AfterValidator(_id)]
    """The workflow's wf_… id (Agent Builder)."""
    version: Annotated[Text | None, AfterValidator(_version)] = None
    """A pinned version; omit for the latest deployed one."""
    tracing: Flag | None = None
    """Whether OpenAI traces its runs."""
    automatic_thread_titling: Flag | None = None
    """Whether ChatKit titles threads itself."""
    file_upload: FileUpload | None = None
    """{ enabled, max_file_size (MB, 1..512), max_files }."""
    history: History | None = None
    """{ enabled, recent_threads }."""
    state_variables: Annotated[
        tuple[tuple[str, Any], ...], BeforeValidator(_state), Says(" must be a table")
    ] = ()
    """Variables sent with each mint: a value, or "claim:<name>" to copy a token claim."""
