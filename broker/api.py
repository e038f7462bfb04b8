"""The bodies of the broker's HTTP API, declared once: the routes validate and build with
these, and ``openapi.py`` generates ``/openapi.json``'s schemas from them, so the document
cannot say something the code does not enforce.

What comes in is a pydantic model (strict: JSON types only, no coercion of ``"yes"`` to
``true``), parsed with ``parse`` into the broker's ``InvalidRequest`` and the sentence the
model's ``refusals`` give for the first thing wrong. What goes out is a closed ``TypedDict``,
written as a dict literal annotated with it (a model would cost the mint ~3.5 µs per answer,
and even calling the TypedDict ~2 µs, for values the broker made itself): a type checker holds
the literal to it, and the contract tests hold every real answer to the document generated
from these declarations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, ClassVar, Literal, NotRequired, Self

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    StrictStr,
    Tag,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
    with_config,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from .errors import InvalidRequest, error_classes

__all__ = [
    "MAX_PAGE_SIZE",
    "REQUEST_ID_PATTERN",
    "CancelRequest",
    "Cancelled",
    "ClientConfig",
    "Error",
    "NotReady",
    "RunAnswer",
    "RunRequest",
    "Session",
    "SessionRequest",
    "Status",
    "Usage",
    "WorkflowEntry",
    "WorkflowRef",
    "Workflows",
    "mint_request",
    "schemas",
]

#: the request ids the broker keeps (the edge's check); others are replaced by its own
REQUEST_ID_PATTERN = "^[A-Za-z0-9._-]{1,128}$"
#: the most threads or items one page of ``/api/threads…`` holds
MAX_PAGE_SIZE = 100

Kind = Literal["hosted", "gateway", "agent", "mock"]
#: every code the error tree (broker/errors.py) can answer with
ErrorCode = Literal[tuple(dict.fromkeys(cls.code for cls in error_classes()))]  # type: ignore[valid-type]


# --- requests ---------------------------------------------------------------------------------


class Body(BaseModel):
    """A JSON request body. ``refusals`` name, in the order the broker checks them, what each
    failure is told: ``(where, error types or None for any, message)``, ``where`` a dotted
    location prefix ("" matches all), the message None for the error's own (a ``refused``
    error raised with the sentence), ``{fields}`` in it the unknown fields; the first rule
    that matches any error wins, whatever order pydantic found them in."""

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)
    refusals: ClassVar[Sequence[tuple[str, frozenset[str] | None, str | None]]] = ()

    @classmethod
    def parse(cls, data: Any) -> Self:
        """The body as this model, or ``InvalidRequest`` saying what is wrong with it."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise InvalidRequest(cls.refusal(exc.errors(include_url=False))) from None

    @classmethod
    def refusal(cls, errors: Sequence[ErrorDetails]) -> str:
        found = [(".".join(map(str, e["loc"])), e) for e in errors]
        if any(e["type"] == "model_type" and not loc for loc, e in found):
            return "The request body must be a JSON object."
        for where, types, message in cls.refusals:
            hits = [
                e
                for loc, e in found
                if (not where or loc == where or loc.startswith(where + "."))
                and (types is None or e["type"] in types)
            ]
            if hits and message is None:
                return hits[0]["msg"]
            if hits:
                extra = sorted(str(e["loc"][-1]) for e in hits if e["type"] == "extra_forbidden")
                return message.replace("{fields}", ", ".join(extra))
        # a failure no rule names is a bug in the rules, but still the caller's 400
        return found[0][1]["msg"] if found else "The request body is not valid."


_EMPTY = frozenset({"string_too_short"})
_REFUSED = frozenset({"refused"})
Name = Annotated[StrictStr, Field(min_length=1)]


class WorkflowObject(Body):
    """The OpenAI starter app's ``{"id": …}`` form of a workflow."""

    id: Name


def _workflow_form(value: Any) -> str:
    return "object" if isinstance(value, dict) else "name"


class SessionRequest(Body):
    """Which workflow to mint a session for: a configured name or an allowlisted `wf_…` id.
    `{"workflow": {"id": …}}` and `{"workflowId": …}` are accepted for front ends written for
    the OpenAI starter app (`workflow` wins when both are sent). Unknown fields are ignored;
    the user always comes from the token."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["workflow"], "properties": {"workflow": {"not": {"type": "null"}}}},
                {"required": ["workflowId"], "properties": {"workflowId": {"type": "string"}}},
            ],
            "examples": [{"workflow": "support"}],
        }
    )
    # declared in the order they are checked: ``workflowId``'s type before ``workflow``'s
    workflowId: StrictStr | None = None  # the starter app's spelling
    workflow: (
        Annotated[
            Annotated[Name, Tag("name")] | Annotated[WorkflowObject, Tag("object")],
            Discriminator(_workflow_form),
        ]
        | None
    ) = None
    previous_session_id: StrictStr | None = Field(
        None,
        description="On a refresh, the session this one replaces: the broker cancels it when "
        "the caller owns it (a failed cancel never fails the mint).",
    )

    refusals = (
        ("", _REFUSED, None),  # no workflow named, or an empty workflowId (``_named``)
        ("workflowId", None, "'workflowId' must be a string."),
        ("workflow.object.id", frozenset({"string_type", "missing"}), "'workflow.id' must be a string."),
        ("workflow.name", frozenset({"string_type"}), "'workflow' must be a workflow name, or an object with an 'id'."),
        ("workflow", _EMPTY, "The workflow name is empty."),
        ("workflow", None, "'workflow' must be a workflow name, or an object with an 'id'."),
        ("previous_session_id", None, "'previous_session_id' must be a string."),
    )  # fmt: skip

    @model_validator(mode="before")
    @classmethod
    def _named(cls, data: Any) -> Any:
        """No workflow at all, or an empty ``workflowId`` that would be used: refused before the
        field types (the broker asks for a workflow before it looks at ``previous_session_id``)."""
        if isinstance(data, dict) and data.get("workflow") is None:
            workflow_id = data.get("workflowId")
            if workflow_id is None:
                raise PydanticCustomError("refused", 'Name the workflow: {"workflow": "<name>"}.')
            if workflow_id == "":
                raise PydanticCustomError("refused", "The workflow name is empty.")
        return data

    @property
    def ref(self) -> str:
        """The workflow named: ``workflow`` (either form) wins over ``workflowId``."""
        if isinstance(self.workflow, WorkflowObject):
            return self.workflow.id
        return self.workflow if self.workflow is not None else self.workflowId or ""


def mint_request(data: Any) -> tuple[str, str | None]:
    """The workflow and the previous session a mint body names.

    The mint is the hot path: the shape nearly every mint sends (a non-empty ``workflow``
    string, perhaps a ``previous_session_id``) is accepted here without pydantic, which costs
    about 16 k more instructions (~4 µs) a mint. The shortcut only ever accepts, and only what
    the model accepts with the same meaning (a hypothesis property in tests/test_api.py); every
    other body, every refusal included, is the model's call.
    """
    if type(data) is dict:
        workflow, previous = data.get("workflow"), data.get("previous_session_id")
        workflow_id = data.get("workflowId")
        if (
            type(workflow) is str
            and workflow
            and (previous is None or type(previous) is str)
            and (workflow_id is None or type(workflow_id) is str)
        ):
            return workflow, previous
    body = SessionRequest.parse(data)
    return body.ref, body.previous_session_id


class CancelRequest(Body):
    """One of the caller's sessions, or all of them."""

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["session_id"], "properties": {"session_id": {"minLength": 1}}},
                {"required": ["all"], "properties": {"all": {"const": True}}},
            ],
            "examples": [{"session_id": "cksess_123"}, {"all": True}],
        }
    )
    session_id: StrictStr | None = None
    all: StrictBool = False

    refusals = (("", None, 'Send {"session_id": "cksess_…"} or {"all": true}.'),)

    @model_validator(mode="after")
    def _something(self) -> Self:
        if not self.all and not self.session_id:
            raise PydanticCustomError("refused", "")
        return self


class RunRequest(Body):
    """One message for an agent workflow: text, or JSON sent as its serialisation."""

    model_config = ConfigDict(extra="forbid")
    input: StrictStr | dict[str, Any] | list[Any] = Field(
        description="The user's message; a JSON object (or array) is sent as its JSON text."
    )
    thread_id: Name | None = Field(None, description="Continue this thread; a new one if absent.")
    background: StrictBool = Field(
        False,
        description="true: answer 202 and the queued run at once; read it at GET /api/runs/{id}.",
    )
    user: Name | None = Field(
        None, description="Service keys made with --act-for-users only: the user the run is for."
    )
    attachments: list[StrictStr] | None = Field(
        None, description="Ids of files uploaded with attachments.create, sent with the message."
    )

    refusals = (
        ("", frozenset({"extra_forbidden"}), "Unknown field(s) {fields}; send input, thread_id, attachments, background (and user, with a service key)."),
        ("input", frozenset({"missing"}), 'Send the message as {"input": "text"} (or a JSON object).'),
        ("input", _REFUSED, '"input" must not be empty.'),
        ("input", None, '"input" must be a string or a JSON object.'),
        ("thread_id", None, '"thread_id" must be a thread id string.'),
        ("background", None, '"background" must be true or false.'),
        ("user", None, '"user" must be a user id string.'),
        ("attachments", None, '"attachments" must be a list of attachment ids (strings).'),
    )  # fmt: skip

    @field_validator("input")
    @classmethod
    def _not_blank(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip():
            raise PydanticCustomError("refused", '"input" must not be empty.')
        return value


# --- answers ----------------------------------------------------------------------------------

Closed = with_config(ConfigDict(extra="forbid"))


@Closed
class WorkflowRef(TypedDict):
    name: str
    kind: Kind
    id: NotRequired[Annotated[str, Field(description="The `wf_` id; hosted workflows only.")]]


@Closed
class Dictation(TypedDict):
    enabled: bool


class UploadStrategy(TypedDict):
    type: Literal["two_phase", "direct"]
    uploadUrl: NotRequired[
        Annotated[
            str,
            Field(
                description="direct only: the broker path the composer posts files to, with "
                "`?t=` signed for this user, workflow and session (12 hours) on gateway workflows."
            ),
        ]
    ]


class ComposerAttachments(TypedDict):
    """The composer's attachment options, from the workflow's ``files`` policy."""

    enabled: bool
    max_size: NotRequired[Annotated[int, Field(description="bytes")]]
    max_count: NotRequired[int]
    accept: NotRequired[
        Annotated[dict[str, list[str]], Field(description="MIME type → file extensions")]
    ]


@Closed
class BackendEndpoint(TypedDict):
    url: Annotated[str, Field(pattern="^/chatkit/")]
    domain_key: str
    dictation: NotRequired[
        Annotated[
            Dictation,
            Field(description="ChatKit's `composer.dictation` (agent and gateway workflows)."),
        ]
    ]
    upload_strategy: NotRequired[
        Annotated[
            UploadStrategy,
            Field(description="ChatKit's `api.uploadStrategy` (agent and gateway workflows)."),
        ]
    ]
    attachments: NotRequired[
        Annotated[ComposerAttachments, Field(description="ChatKit's `composer.attachments`.")]
    ]


Backend = Annotated[
    BackendEndpoint | None,
    Field(
        description="Where ChatKit sends its requests (`api: {url, domainKey, fetch}`, with "
        "`Authorization: Bearer <client_secret>`); null for hosted workflows."
    ),
]


@Closed
class Session(TypedDict):
    """A new session: what the front end hands to ChatKit."""

    client_secret: Annotated[
        str,
        Field(
            min_length=1,
            description="OpenAI's client secret (`ek_…`) for a hosted workflow; the broker's "
            "own session secret (`cks_…`) for every other kind.",
        ),
    ]
    expires_at: Annotated[int, Field(description="Unix time (s) of expiry.")]
    session_id: Annotated[
        str, Field(description="`cksess_…` (hosted) or `bsess_…` (the broker's own)")
    ]
    workflow: WorkflowRef
    backend: Backend
    mock: bool


@Closed
class Cancelled(TypedDict):
    cancelled: list[str]


@Closed
class WorkflowEntry(TypedDict):
    label: str
    name: str
    kind: Kind
    id: NotRequired[str]
    backend: Backend


@Closed
class Workflows(TypedDict):
    workflows: list[WorkflowEntry]
    mock: bool


@Closed
class ClientConfig(TypedDict):
    """What the test page needs before sign-in."""

    mode: Literal["live", "mock"]
    auth_required: bool
    chatkit_js_url: str
    kinds: Annotated[
        list[Kind], Field(description="The kinds of backend this broker's workflows use.")
    ]
    chatkit_url: Annotated[
        str | None,
        Field(description="`/chatkit/{name}` when some workflow is not hosted, else null."),
    ]
    mock_backend_url: str | None
    domain_key: str | None


@Closed
class Status(TypedDict):
    status: Literal["ok", "ready"]
    degraded: NotRequired[
        Annotated[
            list[str],
            Field(
                description="Degraded modes served while ready, e.g. budgets counted per process."
            ),
        ]
    ]


class RunRefusal(TypedDict):
    """A guardrail stopped the message: which kinds, and the refusal shown to the user."""

    guardrails: list[str]
    message: str


class RunAnswer(TypedDict):
    """An agent run's whole answer."""

    thread_id: str
    output: NotRequired[
        Annotated[
            Any,
            Field(
                description="The typed output, the parsed JSON object, or the text "
                "(absent when a guardrail stopped the message)."
            ),
        ]
    ]
    output_text: str
    refusal: NotRequired[
        Annotated[
            RunRefusal,
            Field(description="Present instead of `output` when a guardrail stopped the message."),
        ]
    ]


class Page(TypedDict):
    """A ChatKit page of threads or thread items (ChatKit's own item shapes)."""

    data: list[dict[str, Any]]
    has_more: bool
    after: NotRequired[str | None]


@Closed
class ErrorDetail(TypedDict):
    """What went wrong: ``code`` from the error tree, ``message`` for a person."""

    code: ErrorCode
    message: Annotated[str, Field(min_length=1, description="A sentence a person can act on.")]
    request_id: Annotated[str, Field(pattern=REQUEST_ID_PATTERN)]


class BudgetState(TypedDict):
    """A spent budget (``budget_exceeded``): which, how much, and when it resets."""

    name: str
    unit: Annotated[str, Field(description="tokens or usd")]
    limit: float
    used: float
    remaining: float
    resets_at: Annotated[str, Field(description="ISO 8601, UTC")]


@Closed
class UsageTotals(TypedDict):
    """What one user spent on one workflow in a window (UTC), from the usage table."""

    input_tokens: int
    cached_tokens: int
    output_tokens: int
    reasoning_tokens: int
    total_tokens: int
    cost_usd: Annotated[float, Field(description="US dollars, at the broker's prices")]
    calls: Annotated[int, Field(description="Model calls recorded")]
    unknown_calls: Annotated[
        int, Field(description="Calls whose model has no price (not in cost_usd)")
    ]


@Closed
class UsageBudget(TypedDict):
    """One budget that applies to the caller: its limit, what is used (runs in progress
    included) and what is left until it resets."""

    name: str
    unit: Annotated[Literal["tokens", "usd"], Field(description="tokens or usd")]
    limit: float
    used: float
    remaining: float
    resets_at: Annotated[str, Field(description="ISO 8601, UTC")]


@Closed
class WorkflowUsage(TypedDict):
    """The caller's usage of one agent workflow."""

    workflow: str
    tier: Annotated[str | None, Field(description="The budget tier the caller's claims chose")]
    today: UsageTotals
    this_month: UsageTotals
    budgets: list[UsageBudget]


@Closed
class Usage(TypedDict):
    """``GET /api/usage``: the caller's usage per agent workflow they may use."""

    user: str
    workflows: list[WorkflowUsage]


class Error(TypedDict):
    """The one error shape of the API, written by ``errors.render``."""

    error: ErrorDetail
    budget: NotRequired[
        Annotated[BudgetState, Field(description="Only with budget_exceeded: the spent budget.")]
    ]


class NotReady(Error):
    """An error body that also lists what keeps the broker from serving."""

    missing: Annotated[list[str], Field(min_length=1)]


# the schema names of /openapi.json: requests as validated, answers as serialised
_REQUESTS = (SessionRequest, CancelRequest, RunRequest)
_ANSWERS = (Session, Cancelled, Workflows, ClientConfig, Status, RunAnswer, Page, Usage)
_ERRORS = (Error, NotReady)


def schemas(ref_template: str = "#/components/schemas/{model}") -> dict[str, Any]:
    """Every body's JSON Schema by name, with ``$ref``s to the others through ``ref_template``."""
    inputs = [(cls.__name__, "validation", TypeAdapter(cls)) for cls in _REQUESTS]
    inputs += [(cls.__name__, "serialization", TypeAdapter(cls)) for cls in _ANSWERS]
    inputs += [(cls.__name__, "serialization", TypeAdapter(cls)) for cls in _ERRORS]
    top, defs = TypeAdapter.json_schemas(inputs, ref_template=ref_template)  # type: ignore[arg-type]
    found: dict[str, Any] = dict(defs.get("$defs", {}))
    for (name, _mode), schema in top.items():
        if "$ref" in schema:  # the top level is a reference to its own definition
            target = schema["$ref"].rsplit("/", 1)[1]
            if target != name:
                found[name] = found.pop(target)
        else:
            found[name] = schema
    return found
