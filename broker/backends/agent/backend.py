"""Agent workflows' backend: the broker hosts each one's agent as a ChatKit server at
``POST /chatkit/<name>``, plus server-side runs and thread listings under ``/api/``.

One thread store serves all agent workflows (threads are scoped by user and workflow); one
``AgentServer`` per workflow runs its target. The store starts with the app, and a database
that is down at start-up is retried on each request and by readiness, so the broker comes
up before its database (a common order in compose files) and serves as soon as it answers.
Mock mode (backends/mock) runs every workflow on this backend with one canned agent.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from openai import AsyncOpenAI
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import Receive, Scope, Send

from ...api import RunRequest
from ...budgets import BudgetBook
from ...errors import BrokerError, InvalidRequest, NotFound, StoreUnavailable
from ...files.urls import base_url
from ...gate import Gate
from ...ratelimit import RateLimits
from ...service_keys import ServiceKeys
from ...settings import ConfigError, Settings
from ...webhooks import Webhooks
from ...workflow import Workflow
from ..base import Admission, Backend, Check, SessionMaker
from ..turns import starts_a_turn
from . import backend_api, runs, usage_api
from .attachments import (
    DescribingConverter,
    Files,
    FilesConverter,
    FilesStore,
    attachment_ids,
    current_base,
)
from .background import BackgroundRuns
from .engine import AgentServer
from .options import AgentOptions
from .protocol import answer, parse_request
from .store import Caller, SchemaTooNew
from .targets import Target, TargetError, load_target
from .usage import Metering, seed_from, tier_of
from .voice import Dictation

__all__ = ["AgentBackend", "load_targets"]

log = logging.getLogger("broker.agent")

NO_STORE = {"Cache-Control": "no-store"}


def load_targets(
    workflows: Sequence[Workflow], *, base_dir: Path | None = None
) -> dict[str, Target]:
    """Import every agent workflow's target; ``ConfigError`` naming each one that fails."""
    targets: dict[str, Target] = {}
    problems = []
    for workflow in workflows:
        if workflow.kind != "agent" or not workflow.agent:
            continue
        try:
            targets[workflow.name] = load_target(workflow.agent, base_dir=base_dir)
        except TargetError as exc:
            problems.append(f"workflow {workflow.name!r}: {exc}")
    if problems:
        raise ConfigError(problems)
    return targets


class AgentBackend(Backend):
    """Serves agent workflows (or, with ``mock_agent``, every workflow on that one target)."""

    kind: ClassVar[str] = "agent"

    def __init__(
        self,
        settings: Settings,
        sessions: SessionMaker,
        gate: Gate,
        limits: RateLimits,
        *,
        targets: Mapping[str, Target] | None = None,
        mock_agent: Target | None = None,
        openai_client: AsyncOpenAI | None = None,
    ) -> None:
        self.settings = settings
        self.options = settings.agent or AgentOptions()
        self.sessions = sessions
        self.gate = gate
        self.limits = limits
        self.mock_agent = mock_agent
        self.targets = (
            dict(targets)
            if targets is not None
            else ({} if mock_agent is not None else load_targets(settings.workflows))
        )
        self.store = FilesStore(self.options.database_url)
        self.files = _make_files(settings, self.store)
        self._client = openai_client
        self._own_client = openai_client is None
        self._servers: dict[str, AgentServer] = {}
        # budgets: counters shared through the rate limits' Redis, when there is one
        self.metrics = getattr(limits, "_metrics", None)
        self.book = BudgetBook(
            seed_from(self.store), metrics=self.metrics, store=getattr(limits, "_store", None)
        )
        self.metering: dict[str, Metering] = {}
        self._started = False
        self._start_lock = asyncio.Lock()
        # back ends as callers (issue 28): keys in this database, background runs, webhooks
        self.service_keys = ServiceKeys(self.store)
        gate.service_keys = self.service_keys
        self.webhooks = Webhooks(self.store, backend_api.webhook_targets(settings.workflows))
        environment = getattr(settings, "environment", None)
        self.background = BackgroundRuns(
            self.store,
            self._background_run,
            lease=getattr(environment, "run_lease", 30.0),
            finished=self.webhooks.record,
            queue=getattr(environment, "run_queue", "auto"),
        )

    # --- life cycle ---------------------------------------------------------------------

    async def startup(self) -> None:
        if self._client is None and self.mock_agent is None:
            self._client = AsyncOpenAI(
                api_key=self.settings.openai_api_key,
                base_url=self.settings.openai_base_url,
                organization=self.settings.openai_organization,
                project=self.settings.openai_project,
            )
        dictation = Dictation(
            None if self.mock_agent else self._client,
            self.settings.transcribe_model,
            max_seconds=self.settings.transcribe_max_seconds,
        )
        for workflow in self.settings.workflows:
            target = self.mock_agent or self.targets.get(workflow.name)
            if target is None:
                continue
            self.metering[workflow.name] = Metering(
                workflow.name, workflow.budget, self.store, self.book, self.metrics
            )
            self._servers[workflow.name] = server = AgentServer(
                self.store,
                target,
                openai_client=self._client,
                tracing=self.options.tracing,
                refusal=workflow.guardrail_message,
                metering=self.metering[workflow.name],
            )
            server.attachment_store = self.files
            # chatkit calls self.transcribe: the instance's, set here (mock: no client)
            server.transcribe = dictation.transcribe  # type: ignore[method-assign]
            converter = DescribingConverter if self.mock_agent else FilesConverter
            server.converter = converter(self.files.storage)
        self.files.start_sweeper()
        try:
            await self._ensure_started()
        except StoreUnavailable as exc:
            log.warning("agent threads: %s The broker starts; requests wait for it.", exc.message)
        except SchemaTooNew as exc:
            log.error("agent threads: %s", exc)
            # the app shuts down only the backends that started: what this one started so
            # far (the file sweeper, the OpenAI client) is closed here
            await self.shutdown()
            raise
        self.background.start()
        log.info(
            "background runs execute %s (this instance: %s)",
            "on the queue (procrastinate, in the thread database)"
            if self.background.queue is not None
            else "in-process",
            self.background.instance,
        )
        self.webhooks.start()

    async def shutdown(self) -> None:
        try:
            await self.background.stop()
            await self.webhooks.stop()
            for server in self._servers.values():
                await server.drain()
            await self.files.close()
            await self.store.close()
        finally:
            # The OpenAI client is closed whatever failed before it: left to the collector,
            # openai-python closes it in a task on whatever loop is running then (another
            # app's, another test's), which logs "Task exception was never retrieved" there.
            if self._own_client and self._client is not None:
                await self._client.close()

    async def _ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if not self._started:
                await self.store.start()
                self._started = True
                log.info("agent threads in %s", self.store.where)

    def readiness(self) -> Sequence[Check]:
        async def store_ready() -> str | None:
            try:
                await self._ensure_started()
            except StoreUnavailable as exc:
                return exc.message
            return await self.store.ping()

        return [store_ready]

    def degraded(self) -> Sequence[Check]:
        return [self.book.degraded]

    # --- the ChatKit endpoint -------------------------------------------------------------

    def server(self, workflow: Workflow) -> AgentServer:
        server = self._servers.get(workflow.name)
        if server is None:
            raise NotFound(f"Workflow {workflow.name!r} is not an agent workflow of this broker.")
        return server

    async def serve(self, admission: Admission, scope: Scope, receive: Receive, send: Send) -> None:
        workflow = admission.workflow
        server = self.server(workflow)
        body = await Request(scope, receive).body()
        request = parse_request(body)
        counted = starts_a_turn(request.type) and await self._count_message(admission)
        current_base.set(base_url(scope, self.settings.public_url))
        caller = self.caller(admission)
        try:
            await self._ensure_started()
            await self.files.check(request, caller)
            response = await answer(server, body, caller, uploads=True)
        except BrokerError as exc:
            await self._refund_if_refused(counted, admission, exc)
            raise
        await response(scope, receive, send)

    def caller(self, admission: Admission) -> Caller:
        """The request context, with the budget tier the caller's claims choose."""
        workflow = admission.workflow
        tier = tier_of(workflow.budget, admission.identity.claims)
        return Caller(admission.identity.user, workflow.name, tier)

    def _message_limit(self, admission: Admission) -> tuple[str, str, int, str] | None:
        limit = admission.workflow.max_messages_per_minute
        if limit is None:
            return None
        name = admission.workflow.name
        key = f"{name}:{admission.identity.user}"
        return "workflow_messages", key, limit, f"messages to workflow {name!r}"

    async def _count_message(self, admission: Admission) -> bool:
        """Count a message against ``max_messages_per_minute``; whether it was counted."""
        limit = self._message_limit(admission)
        if limit is None:
            return False
        name, key, count, what = limit
        await self.limits.hit_per_minute(name, key, count, what=what)
        return True

    async def _refund_if_refused(
        self, counted: bool, admission: Admission, exc: BrokerError
    ) -> None:
        """A message refused before any run (4xx: another user's thread, a bad request; or
        the thread store unreachable) started no turn: its count is given back, as the
        gateway does for a backend's refusal. A run that failed or timed out still counts."""
        limit = self._message_limit(admission) if counted else None
        if limit is not None and (400 <= exc.status < 500 or isinstance(exc, StoreUnavailable)):
            name, key, count, what = limit
            await self.limits.refund_per_minute(name, key, count, what=what)

    # --- server-side APIs -----------------------------------------------------------------

    def routes(self) -> Sequence[BaseRoute]:
        return [
            Route("/api/workflows/{name}/runs", self.run_endpoint, methods=["POST"]),
            Route("/api/threads", self.threads_endpoint, methods=["GET"]),
            Route("/api/threads/{thread_id}/items", self.items_endpoint, methods=["GET"]),
            Route("/api/usage", self.usage_endpoint, methods=["GET"]),
            *backend_api.routes(self),
            *self.files.routes(),
        ]

    async def usage_endpoint(self, request: Request) -> Response:
        """``GET /api/usage``: the caller's usage and budgets (usage_api.py)."""
        return await usage_api.usage_endpoint(self, request)

    async def _background_run(
        self,
        name: str,
        caller: Caller,
        text: str,
        thread_id: str,
        timeout: float,
        attachments: tuple[str, ...] = (),
    ) -> runs.RunAnswer:
        """One background run's agent turn, as a synchronous run does it: the budgets and
        attachments are checked again when it starts, since a queued run may start after the
        budget is spent or an upload was deleted."""
        await self._ensure_started()
        workflow = self._agent_workflow(name)
        await self.metering[workflow.name].check(caller.user, caller.tier)
        await self.files.check_ids(list(attachments), caller)
        return await runs.run(
            self.server(workflow),
            caller,
            text,
            thread_id=thread_id,
            timeout=timeout,
            attachments=attachments,
        )

    def endpoint(self, workflow: Workflow, domain_key: str) -> Mapping[str, Any] | None:
        found = super().endpoint(workflow, domain_key)
        return None if found is None else {**found, **self.files.kit_options(workflow)}

    def _agent_workflow(self, name: str) -> Workflow:
        workflow = self.settings.workflow_named(name)
        if workflow is None or workflow.name not in self._servers:
            raise NotFound(
                f"There is no agent workflow {name[:80]!r} on this broker; "
                "GET /api/chatkit/workflows lists yours."
            )
        return workflow

    async def run_endpoint(self, request: Request) -> Response:
        """``POST /api/workflows/{name}/runs`` ``{"input", "thread_id"?}``: one message, answered."""
        await backend_api.refuse_background_elsewhere(self, request)
        workflow = self._agent_workflow(request.path_params["name"])
        admission, body, key = await backend_api.admit_run(self, request, workflow)
        request.state.user = admission.identity.user
        parsed = RunRequest.parse(body)
        if parsed.user is not None and key is None:
            raise InvalidRequest(
                '"user" is for service keys made with --act-for-users; a signed-in caller '
                "runs as themselves."
            )
        text, thread_id = runs.input_text(parsed.input), runs.thread_ref(parsed.thread_id)
        background = parsed.background
        current_base.set(base_url(request.scope, self.settings.public_url))
        attachments = attachment_ids(parsed.attachments)
        counted = await self._count_message(admission)
        if background:
            try:
                caller = self.caller(admission)  # a spent budget refuses before queueing
                await self.metering[workflow.name].check(caller.user, caller.tier)
                await self._ensure_started()
                # the named user's own uploads of this workflow (a key's, for the user it
                # names), as a synchronous run checks them: 404 for anyone else's
                await self.files.check_ids(attachments, caller)
                return await backend_api.start_background(
                    self, request, admission, key, text, thread_id, tuple(attachments)
                )
            except BrokerError as exc:
                await self._refund_if_refused(counted, admission, exc)
                raise
        try:
            await self._ensure_started()
            server = self.server(workflow)
            caller = self.caller(admission)
            await self.metering[workflow.name].check(caller.user, caller.tier)
            await self.files.check_ids(attachments, caller)
            if request.query_params.get("stream") in ("1", "true"):
                body_ = runs.chatkit_body(text, thread_id, attachments)
                return await answer(server, body_, caller)
            result = await runs.run(
                server,
                caller,
                text,
                thread_id=thread_id,
                timeout=self.options.run_timeout,
                attachments=attachments,
            )
        except BrokerError as exc:
            await self._refund_if_refused(counted, admission, exc)
            raise
        return Response(
            json.dumps(result.as_json(), ensure_ascii=False),
            media_type="application/json",
            headers=NO_STORE,
        )

    async def threads_endpoint(self, request: Request) -> Response:
        """``GET /api/threads?workflow=<name>&limit&after``: the caller's threads, newest first."""
        name = request.query_params.get("workflow")
        if not name:
            raise InvalidRequest("Name the workflow: GET /api/threads?workflow=<name>.")
        workflow = self._agent_workflow(name)
        admission = await backend_api.admit_read(self, request, workflow)
        request.state.user = admission.identity.user
        await self._ensure_started()
        caller = self.caller(admission)
        page = await runs.list_threads(self.server(workflow), caller, request.query_params)
        return Response(page, media_type="application/json", headers=NO_STORE)

    async def items_endpoint(self, request: Request) -> Response:
        """``GET /api/threads/{id}/items?limit&after&order``: one of the caller's threads.

        A session secret reads back threads of its own workflow only, as ``/api/threads``
        and the runs route allow it (same user, same workflow: nothing to escalate)."""
        authorization = request.headers.get("authorization")
        thread_id = request.path_params["thread_id"]
        current_base.set(base_url(request.scope, self.settings.public_url))
        own = self.gate.secret_workflow(authorization)
        if self.gate.service_key_token(authorization) is not None:
            admission = await backend_api.admit_thread_read(self, request, thread_id)
            workflow = admission.workflow
        elif own is not None and own in self._servers:
            admission = await self.gate.admit_chatkit(authorization, self._agent_workflow(own))
            request.state.user = admission.identity.user
            await self._ensure_started()
            name = await self.store.thread_workflow(thread_id, admission.identity.user)
            if name != own:
                raise NotFound(f"Thread {thread_id[:80]} not found.")
            workflow = admission.workflow
        else:
            identity = await self.gate.identify(authorization)
            request.state.user = identity.user
            await self._ensure_started()
            name = await self.store.thread_workflow(thread_id, identity.user)
            found = self.settings.workflow_named(name) if name is not None else None
            if found is None or found.name not in self._servers:
                raise NotFound(f"Thread {thread_id[:80]} not found.")
            admission = self.gate.admit(identity, found.name)
            workflow = admission.workflow
        caller = Caller(admission.identity.user, workflow.name)
        page = await runs.list_items(self.server(workflow), caller, thread_id, request.query_params)
        return Response(page, media_type="application/json", headers=NO_STORE)


def _make_files(settings: Settings, store: FilesStore) -> Files:
    """The attachment store: signed with the session-secret keys (a per-process key in mock
    mode, whose sessions are per-process too), bytes where ``BROKER_FILES_STORAGE`` says."""
    import secrets

    from ...files.storage import open_storage
    from ...files.tokens import FileTokens

    keys = list(settings.session_secrets) or [secrets.token_urlsafe(32)]
    return Files(
        store,
        open_storage(settings.files_storage, mock=settings.mock),
        FileTokens(keys),
        {wf.name: wf for wf in settings.workflows},
        public_url=settings.public_url,
    )
