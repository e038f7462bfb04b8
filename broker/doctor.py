"""``chatkit-broker doctor``: diagnose the OpenAI side in one command (issue #6).

Six checks, in order, each ✔ / ⚠ / ✖ (or ○ when skipped) with a one-line fix:

1. the configuration is valid (the same ``load_settings`` the service runs);
2. which API key is in use and where it came from — and whether a shell variable shadows ``.env``;
3. the key works (``GET /models``), and which organization / project the API answers for;
4. every workflow mints (as the throwaway user ``doctor-check``), and is cancelled at once;
5. sign-in tokens: the JWKS keys, the secret's length, and ``--token`` verified exactly as served;
6. the origins of ``BROKER_ALLOWED_ORIGINS`` and OpenAI's domain allowlist.

It reuses the broker's own modules (config, ``HostedSessions``, ``Verifier``, ``JWKSCache``,
``build_session_request``) so that what passes here is what the service does. Everything runs
within one time budget (``--timeout``); a check that runs out of it says so. Nothing it prints
contains a full API key, JWT or client secret: values are masked where they are produced, and the
finished report is scrubbed once more before it is printed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import textwrap
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from .auth import Identity, Verifier
from .backends.hosted import HostedSessions, UpstreamConfig, build_session_request
from .config import ConfigError, Settings, Workflow, load_settings
from .errors import (
    BrokerError,
    Unauthenticated,
    UpstreamAuthFailed,
    UpstreamTimeout,
    UpstreamUnavailable,
    UpstreamWorkflowNotFound,
)
from .gate import unmet_requirements
from .http import HttpPool
from .httpread import read_capped
from .jwks import MAX_JWKS_BYTES, JWKSCache, signing_keys
from .logs import mask, redact
from .loopback import LOOPBACK_HOSTS

PASS, WARN, FAIL, SKIP = "pass", "warn", "fail", "skip"
SYMBOLS = {PASS: "✔", WARN: "⚠", FAIL: "✖", SKIP: "○"}
SCHEMA = "chatkit-broker-doctor/1"
DOCTOR_USER = "doctor-check"
DEFAULT_TIMEOUT = 20.0
CANCEL_GRACE = 5.0  # a minted session is always given this long to be cancelled
KEY_VARIABLES = ("CHATKIT_OPENAI_API_KEY", "OPENAI_API_KEY")
DOMAIN_ALLOWLIST_URL = "https://platform.openai.com/settings/organization/security/domain-allowlist"
API_KEYS_URL = "https://platform.openai.com/api-keys"


@dataclass
class Check:
    """One line of the report (or, under ``items``, one workflow of check 4)."""

    id: str
    title: str
    status: str = PASS
    summary: str = ""
    details: list[str] = field(default_factory=list)
    fix: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    items: list[Check] = field(default_factory=list)

    def set(self, status: str, summary: str, fix: str | None = None) -> Check:
        self.status, self.summary, self.fix = status, summary, fix
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "status": self.status,
            "summary": self.summary,
            "details": list(self.details),
            "fix": self.fix,
            "data": self.data,
        }


@dataclass
class Report:
    checks: list[Check]
    elapsed: float
    timeout: float
    timed_out: str | None = None

    @property
    def ok(self) -> bool:
        return not any(c.status == FAIL for c in self.checks)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "ok": self.ok,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed, 3),
            "timeout_s": self.timeout,
            "timed_out": self.timed_out,
            "checks": [c.as_dict() for c in self.checks],
        }


class _Budget:
    """The one time bound of the whole run; remembers which check ran out of it first."""

    def __init__(self, seconds: float, clock: Callable[[], float]) -> None:
        self.seconds = seconds
        self._clock = clock
        self._deadline = clock() + seconds
        self.exhausted_by: str | None = None

    @property
    def remaining(self) -> float:
        return max(0.0, self._deadline - self._clock())

    @property
    def exhausted(self) -> bool:
        return self.remaining < 0.05

    def limit(self, cap: float) -> tuple[float, bool]:
        """How long the next call may take, and whether the budget (not ``cap``) decides it."""
        remaining = self.remaining
        return min(cap, remaining), remaining <= cap

    def ran_out(self, where: str) -> str:
        self.exhausted_by = self.exhausted_by or where
        return f"timed out: the --timeout budget of {self.seconds:g} s ran out during {where}"

    def skipped(self) -> str:
        where = self.exhausted_by or "an earlier check"
        return f"skipped: no time left (the --timeout budget ran out during {where})"


def _key_in_effect(env: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(variable, key) exactly as ``load_settings`` picks them: CHATKIT_OPENAI_API_KEY wins."""
    for variable in KEY_VARIABLES:
        value = (env.get(variable) or "").strip()
        if value:
            return variable, value
    return None, None


class Doctor:
    def __init__(
        self,
        env: Mapping[str, str],
        shell: Mapping[str, str],
        dotenv: Mapping[str, str],
        *,
        timeout: float = DEFAULT_TIMEOUT,
        token: str | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.env = env
        self.shell = shell
        self.dotenv = dotenv
        self.token = token
        self.clock = clock
        self.budget = _Budget(timeout, clock)
        self.settings: Settings | None = None
        self.http = HttpPool(limit=8)
        self.key_project: str | None = None  # what GET /models said, for the 404 explanation
        self.stray_key_note: str | None = None
        self.stray_variable: str | None = None
        self.key_label = "?"
        self.secrets: set[str] = {token or ""}

    # --- the run --------------------------------------------------------------------------

    async def run(self) -> Report:
        started = self.clock()
        try:
            config = self.check_config()
            key = self.check_key()
            works = await self.check_key_works(key)
            workflows = await self.check_workflows(works)
            auth = await self.check_auth()
            domains = self.check_domains()
        finally:
            await self.http.close()
        checks = [config, key, works, workflows, auth, domains]
        return Report(
            checks,
            self.clock() - started,
            self.budget.seconds,
            self.budget.exhausted_by,
        )

    # --- 1. configuration -------------------------------------------------------------------

    def check_config(self) -> Check:
        check = Check("config", "Configuration")
        try:
            s = self.settings = load_settings(self.env)
        except ConfigError as exc:
            check.details = list(exc.problems)
            check.data = {"valid": False, "mode": None, "problems": exc.problems, "warnings": []}
            n = len(exc.problems)
            return check.set(
                FAIL,
                f"invalid ({n} problem{'s' * (n != 1)}); the service would refuse to start",
                "fix each variable listed (environment or .env; every one is described in "
                ".env.example), then run 'chatkit-broker doctor' again",
            )
        self.secrets.add(s.jwt.secret or "")
        mode = "mock" if s.mock else "live"
        check.data = {"valid": True, "mode": mode, "problems": [], "warnings": list(s.warnings)}
        n = len(s.workflows)
        summary = (
            f"valid ({mode} mode, {n} workflow{'s' * (n != 1)}, OpenAI API {s.openai_base_url})"
        )
        if s.warnings:
            check.details = list(s.warnings)
            return check.set(WARN, summary, "see the warning above; the service runs as it is")
        return check.set(PASS, summary)

    # --- 2. which key ------------------------------------------------------------------------

    def check_key(self) -> Check:
        check = Check("key", "API key")
        variable, key = _key_in_effect(self.env)
        for value in (key, *(self.dotenv.get(v) for v in KEY_VARIABLES)):
            self.secrets.add((value or "").strip())
        origin = None
        if variable is not None:
            origin = "environment" if variable in self.shell else ".env"
        data: dict[str, Any] = {
            "masked": mask(key) if key else None,
            "variable": variable,
            "origin": origin,
            "dotenv_masked": None,
        }
        check.data = data
        mock = self.settings is not None and self.settings.mock

        hidden = [
            v
            for v in KEY_VARIABLES[: KEY_VARIABLES.index(variable) if variable else None]
            if v in self.shell and not self.shell[v].strip() and (self.dotenv.get(v) or "").strip()
        ]
        if key is None:
            if hidden:
                v = hidden[0]
                return check.set(
                    FAIL,
                    f"the shell sets {v} to an empty value, which hides the key in .env "
                    "(.env never overrides the environment)",
                    f"run 'unset {v}' in this shell, then start the broker again",
                )
            if mock:
                return check.set(SKIP, "none (mock mode makes no OpenAI calls)")
            return check.set(
                FAIL,
                "no API key is set",
                "put CHATKIT_OPENAI_API_KEY=sk-… in .env: a key of the project that owns your "
                f"workflows ({API_KEYS_URL})",
            )

        where = "the shell environment" if origin == "environment" else ".env"
        summary = f"{mask(key)} from {variable} ({where})"
        self.key_label = f"{mask(key)}, {variable} from {where}"
        if hidden:
            v = hidden[0]
            check.details.append(
                f"The shell sets {v} to an empty value, which hides the {v} in .env "
                f"({mask(self.dotenv[v].strip())}); {variable} is used instead."
            )
            return check.set(WARN, summary, f"run 'unset {v}' so the .env value is used")
        in_dotenv = (self.dotenv.get(variable) or "").strip()
        if origin == "environment" and in_dotenv and in_dotenv != key:
            data["dotenv_masked"] = mask(in_dotenv)
            self.stray_variable = variable
            self.stray_key_note = (
                f"check 2 found the shell's {variable} ({mask(key)}) overriding the one in "
                f".env ({mask(in_dotenv)}): that is the most likely cause"
            )
            check.details.append(
                f"The shell's {variable} ({mask(key)}) is the key in effect: it differs from "
                f"the one in .env ({mask(in_dotenv)}), and .env never overrides the environment."
            )
            fix = f"run 'unset {variable}' so the .env key is used"
            if variable == "OPENAI_API_KEY":
                fix += ", or put the right key in CHATKIT_OPENAI_API_KEY (it always wins)"
            return check.set(WARN, summary, fix)
        if variable == "CHATKIT_OPENAI_API_KEY":
            other = (self.env.get("OPENAI_API_KEY") or "").strip()
            if other and other != key:
                check.details.append(
                    f"OPENAI_API_KEY ({mask(other)}) is set too and ignored: "
                    "CHATKIT_OPENAI_API_KEY wins."
                )
        return check.set(PASS, summary)

    # --- 3. does the key work ------------------------------------------------------------------

    def _headers(self, s: Settings) -> dict[str, str]:
        assert s.openai_api_key is not None
        headers = {"Authorization": f"Bearer {s.openai_api_key}"}
        if s.openai_organization:
            headers["OpenAI-Organization"] = s.openai_organization
        if s.openai_project:
            headers["OpenAI-Project"] = s.openai_project
        return headers

    async def check_key_works(self, key: Check) -> Check:
        check = Check("key_works", "Key and project")
        s = self.settings
        check.data = {
            "base_url": s.openai_base_url if s else None,
            "http_status": None,
            "organization": None,
            "project": None,
            "request_id": None,
        }
        if s is None:
            return check.set(SKIP, "skipped: the configuration is invalid (check 1)")
        if s.mock:
            return check.set(SKIP, "skipped: mock mode makes no OpenAI calls")
        if key.status == FAIL:
            return check.set(SKIP, "skipped: no usable API key (check 2)")
        if self.budget.exhausted:
            return check.set(FAIL, self.budget.skipped())

        url = f"{s.openai_base_url}/models"
        limit, by_budget = self.budget.limit(s.upstream_timeout)
        try:
            async with (
                asyncio.timeout(limit),
                self.http().get(url, headers=self._headers(s), allow_redirects=False) as resp,
            ):
                status, headers = resp.status, resp.headers
                # one read(n) returns the first chunk only: a chunked body would be cut short
                body = await read_capped(resp.content, 1024 * 1024)
        except TimeoutError:
            if by_budget:
                return check.set(
                    FAIL,
                    self.budget.ran_out("check 3 (GET /models)"),
                    "raise --timeout, or check the network path to OPENAI_BASE_URL",
                )
            return check.set(
                FAIL,
                f"OpenAI did not answer GET {url} within {limit:g} s (BROKER_UPSTREAM_TIMEOUT)",
                "check the network path to OPENAI_BASE_URL (proxy, firewall), then try again",
            )
        except aiohttp.ClientError as exc:
            return check.set(
                FAIL,
                f"could not reach {url}: {str(exc)[:200] or type(exc).__name__}",
                "check OPENAI_BASE_URL and the network (DNS, proxy, firewall)",
            )

        org, project = headers.get("openai-organization"), headers.get("openai-project")
        request_id = headers.get("x-request-id")
        check.data.update(
            http_status=status, organization=org, project=project, request_id=request_id
        )
        self.key_project = project
        said = f"HTTP {status}" + (f", request {request_id}" if request_id else "")
        if status == 401:
            return check.set(
                FAIL,
                f"OpenAI refused the key ({said}): {_api_message(body)}",
                "create a key in the project that owns your workflows "
                f"({API_KEYS_URL}) and put it in CHATKIT_OPENAI_API_KEY",
            )
        if status == 403:
            check.details.append(f"OpenAI: {_api_message(body)}")
            return check.set(
                WARN,
                f"the key may not list models ({said}); restricted keys can lack that permission",
                "nothing to do if the workflows below mint; else give the key ChatKit access",
            )
        if status == 404:
            return check.set(
                FAIL,
                f"GET {url} answered 404: this is not the OpenAI API root",
                f"set OPENAI_BASE_URL to https://api.openai.com/v1 (it ends in /v1), got {s.openai_base_url}",
            )
        if status != 200 or not _is_json_object(body):
            what = "a body that is not the API's JSON" if status == 200 else said
            check.details.append(f"OpenAI: {_api_message(body)}")
            return check.set(
                FAIL if status < 500 and status != 429 else WARN,
                f"GET {url} answered {what}",
                "check OPENAI_BASE_URL; if OpenAI is busy or down, try again shortly",
            )

        if not org:
            check.details.append(
                "the API did not name the organization (no openai-organization header)"
            )
        if not project:
            check.details.append("the API did not name the project (no openai-project header)")
        summary = "OpenAI accepted the key (GET /models → 200)"
        if org or project:
            summary += "; " + ", ".join(
                f"{what} {value}"
                for what, value in (("organization", org), ("project", project))
                if value
            )
        problems: list[str] = []
        if s.openai_project and project and project != s.openai_project:
            problems.append(
                f"OPENAI_PROJECT is {s.openai_project} but the API answered for project {project}"
            )
        if s.openai_organization and org and org != s.openai_organization:
            if org.startswith("org-"):
                problems.append(
                    f"OPENAI_ORGANIZATION is {s.openai_organization} but the API answered for "
                    f"organization {org}"
                )
            else:
                check.details.append(
                    f"(the API names the organization {org!r}, not by id, so it cannot be "
                    f"compared with OPENAI_ORGANIZATION={s.openai_organization})"
                )
        if problems:
            check.details.extend(problems)
            return check.set(
                WARN,
                summary,
                "make OPENAI_ORGANIZATION / OPENAI_PROJECT match the key's, or unset them",
            )
        return check.set(PASS, summary)

    # --- 4. workflows ---------------------------------------------------------------------------

    def _hosted(self, s: Settings, timeout: float) -> HostedSessions:
        return HostedSessions(
            UpstreamConfig.from_settings(s, timeout=max(0.1, min(s.upstream_timeout, timeout))),
            self.http,
        )

    async def check_workflows(self, works: Check) -> Check:
        check = Check("workflows", "Workflows")
        check.data = {"workflows": []}
        s = self.settings
        if s is None:
            return check.set(SKIP, "skipped: the configuration is invalid (check 1)")
        if s.mock:
            return check.set(
                SKIP, "skipped: mock mode makes no OpenAI calls (run doctor without BROKER_MOCK)"
            )
        if works.status in (FAIL, SKIP):
            return check.set(SKIP, "skipped: check 3 (key and project) did not pass")

        for wf in s.workflows:
            item = Check(wf.name, f"{wf.name} ({wf.id})")
            item.data = {
                "name": wf.name,
                "id": wf.id,
                "status": None,
                "summary": None,
                "details": [],
                "fix": None,
                "http_status": None,
                "request_id": None,
                "session_id": None,
                "expires_in_s": None,
                "cancelled": False,
            }
            check.items.append(item)
            if self.budget.exhausted:
                item.set(SKIP, self.budget.skipped())
                continue
            await self._mint_and_cancel(s, wf, item)

        for item in check.items:
            if item.data["http_status"] == 404:
                self._explain_not_found(item, check.items)
            item.data.update(
                status=item.status, summary=item.summary, details=item.details, fix=item.fix
            )
            check.data["workflows"].append(item.data)
            check.details.append(f"{SYMBOLS[item.status]} {item.title}: {item.summary}")

        n = len(check.items)
        failed = sum(i.status == FAIL for i in check.items)
        skipped = sum(i.status == SKIP for i in check.items)
        fixes = list(dict.fromkeys(i.fix for i in check.items if i.status != PASS and i.fix))
        fix = " | ".join(fixes) or None
        if failed or skipped:
            summary = f"{failed} of {n} failed" + (f", {skipped} skipped" if skipped else "")
            return check.set(FAIL, summary, fix)
        if any(i.status == WARN for i in check.items):
            return check.set(WARN, f"{n} of {n} minted, with warnings", fix)
        return check.set(PASS, f"{n} of {n} minted and cancelled")

    async def _mint_and_cancel(self, s: Settings, wf: Workflow, item: Check) -> None:
        body = build_session_request(wf, Identity(user=DOCTOR_USER, claims={}))
        limit, by_budget = self.budget.limit(s.upstream_timeout)
        hosted = self._hosted(s, limit)
        try:
            # HostedSessions keeps its own deadline (retries included); this is a backstop
            async with asyncio.timeout(limit + 1.0):
                created = await hosted.create(body, workflow_label=f"{wf.name!r} ({wf.id})")
        except (TimeoutError, UpstreamTimeout) as exc:
            if not by_budget and isinstance(exc, UpstreamTimeout):
                self._mint_failed(wf, item, exc)
                return
            item.set(
                FAIL,
                self.budget.ran_out(f"check 4 (workflow {wf.name})"),
                "raise --timeout, or check why OpenAI is slow (status.openai.com)",
            )
            item.details.append(
                "if OpenAI created the session anyway it expires by itself (user doctor-check)"
            )
            return
        except BrokerError as exc:
            self._mint_failed(wf, item, exc)
            return

        self.secrets.add(created.client_secret)
        lasts = max(0, created.expires_at - int(time.time()))
        item.data.update(session_id=created.session_id or None, expires_in_s=lasts)
        minted = f"minted (a session lasts {lasts} s)"
        if not created.session_id:
            item.set(
                WARN,
                f"{minted}, but OpenAI gave no session id to cancel",
                "nothing to do: it expires by itself",
            )
            return
        try:
            grace = max(self.budget.remaining, CANCEL_GRACE)
            async with asyncio.timeout(grace):
                await self._hosted(s, grace).cancel(created.session_id)
        except (BrokerError, TimeoutError) as exc:
            reason = exc.message if isinstance(exc, BrokerError) else "no answer in time"
            item.set(
                WARN,
                f"{minted}, but cancelling it failed ({reason})",
                f"nothing to do: session {created.session_id} expires by itself in {lasts} s",
            )
            return
        item.data["cancelled"] = True
        item.set(PASS, f"{minted} and cancelled")

    def _mint_failed(self, wf: Workflow, item: Check, exc: BrokerError) -> None:
        up = exc.upstream
        if up is not None:
            item.data.update(http_status=up.status, request_id=up.request_id)
            said = f'OpenAI: "{up.message}" (HTTP {up.status}, request {up.request_id})'
        else:
            said = exc.message
        if isinstance(exc, UpstreamWorkflowNotFound):
            item.details.append(said)
            item.set(FAIL, "OpenAI says this workflow was not found (HTTP 404)")  # explained below
        elif isinstance(exc, UpstreamAuthFailed):
            item.set(
                FAIL,
                f"the key was refused for ChatKit — {said}",
                "put an API key of the workflow's project that may use ChatKit (check its "
                "permissions) in CHATKIT_OPENAI_API_KEY",
            )
        elif isinstance(exc, UpstreamTimeout):
            item.set(
                FAIL,
                exc.message.rstrip("."),
                "try again; if it persists raise BROKER_UPSTREAM_TIMEOUT",
            )
        elif isinstance(exc, UpstreamUnavailable):
            item.set(FAIL, said, "OpenAI is unreachable or busy: try again shortly")
        elif up is not None and up.status == 400:
            item.set(
                FAIL,
                f"OpenAI rejected the session request — {said}",
                f"correct the option the message names for workflow {wf.name!r} "
                "(BROKER_WORKFLOWS_FILE), or the workflow id",
            )
        else:
            item.set(FAIL, said, "see the message; try again, and check OPENAI_BASE_URL")

    def _explain_not_found(self, item: Check, items: list[Check]) -> None:
        wf_id = item.data["id"]
        project = (
            f"belongs to project {self.key_project}"
            if self.key_project
            else "belongs to a project the API did not name"
        )
        item.details.append(
            f"An API key only sees the workflows of its own project. The key in use "
            f"({self.key_label}) {project}; this workflow is not visible to it."
        )
        if self.stray_key_note:
            note = self.stray_key_note
            item.details.append(note[0].upper() + note[1:] + ".")
        others_work = any(i.status == PASS for i in items)
        if others_work and not self.stray_key_note:
            item.details.append(
                "The same key minted the other workflow(s), so the key itself works: this "
                "workflow lives in another project, is not published, or its id is mistyped."
            )
        elif not self.stray_key_note:
            item.details.append(
                "Most likely cause since 2026-11-30: OpenAI shut Agent Builder down, so hosted "
                "wf_ workflows no longer run. Move it to a gateway workflow (server = "
                '"https://…", your own ChatKit server) or an agent workflow (agent = '
                '"package.module:attr", e.g. the Agents SDK code Agent Builder exported) — see '
                "the README, 'Migrating from Agent Builder'. Older causes: the key belongs to "
                "another project than the workflow (often a stray shell OPENAI_API_KEY), or the "
                "workflow is not published."
            )
        if self.stray_variable:
            fix = f"run 'unset {self.stray_variable}' so the .env key is used, and run doctor again"
        elif others_work:
            where = f"project {self.key_project}" if self.key_project else "the key's project"
            fix = (
                f"in Agent Builder open {wf_id}: check that it is published and lives in {where} "
                "(one broker key serves one project), or correct the id in BROKER_WORKFLOWS"
            )
        else:
            fix = (
                f"in Agent Builder open {wf_id}: publish it and note its project; then put an "
                "API key of that project in CHATKIT_OPENAI_API_KEY (it wins over a shell "
                "OPENAI_API_KEY), or correct the id in BROKER_WORKFLOWS"
            )
        item.fix = fix

    # --- 5. sign-in tokens -------------------------------------------------------------------------

    async def check_auth(self) -> Check:
        check = Check("auth", "Sign-in tokens")
        check.data = {
            "methods": [],
            "algorithms": [],
            "secret_bytes": None,
            "jwks_url": None,
            "jwks_keys": None,
            "token": None,
        }
        s = self.settings
        if s is None:
            return check.set(SKIP, "skipped: the configuration is invalid (check 1)")
        j = s.jwt
        check.data.update(
            algorithms=list(j.hmac_algorithms + j.asymmetric_algorithms), jwks_url=j.jwks_url
        )
        methods = check.data["methods"]
        status, fix = PASS, None
        if j.secret:
            methods.append("secret")
            size = len(j.secret.encode())
            check.data["secret_bytes"] = size
            check.details.append(
                f"HMAC secret (BROKER_JWT_SECRET): {size} bytes (at least 32 required), "
                f"algorithms {', '.join(j.hmac_algorithms)}"
            )
        if j.public_key:
            methods.append("public_key")
            check.details.append(
                f"PEM public key (BROKER_JWT_PUBLIC_KEY): algorithms {', '.join(j.asymmetric_algorithms)}"
            )
        jwks_ok = True
        if j.jwks_url:
            methods.append("jwks")
            jwks_ok, fix = await self._list_jwks(check, j.jwks_url, j.asymmetric_algorithms)
            if not jwks_ok:
                status = FAIL
        if j.configured:
            check.details.append(
                f"audience: {j.audience or '- (tokens with an aud claim are refused)'}; "
                f"issuer: {j.issuer or '-'}; user claim: {j.user_claim}; leeway: {j.leeway} s"
            )
        summary = (
            ", ".join(
                {"secret": "HMAC secret", "public_key": "PEM key", "jwks": "JWKS"}[m]
                for m in methods
            )
            or "no key configured (mock mode reads tokens without verifying them)"
        )

        if self.token is None:
            if j.configured:
                check.details.append(
                    "pass --token <jwt> (or --token - to read it from stdin) to verify a real "
                    "sign-in token"
                )
        else:
            ok, tfix = await self._verify_token(check, s)
            if not ok:
                status, fix = FAIL, fix or tfix
            summary += "; --token " + ("verified" if ok else "refused")
        return check.set(status, summary, fix)

    async def _list_jwks(
        self, check: Check, url: str, algorithms: tuple[str, ...]
    ) -> tuple[bool, str | None]:
        fix = (
            "check BROKER_JWT_JWKS_URL (Supabase: https://<ref>.supabase.co/auth/v1/.well-known/"
            "jwks.json); a project still on the legacy JWT secret needs BROKER_JWT_SECRET instead"
        )
        if self.budget.exhausted:
            check.details.append(f"JWKS {url}: {self.budget.skipped()}")
            return False, None
        limit, by_budget = self.budget.limit(5.0)
        try:
            async with (
                asyncio.timeout(limit),
                self.http().get(url, allow_redirects=False) as resp,
            ):
                status = resp.status
                body = await read_capped(resp.content, MAX_JWKS_BYTES)
            if status != 200:
                raise ValueError(f"HTTP {status}")
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("larger than 512 KiB")
            document = json.loads(body)
        except TimeoutError:
            if by_budget:
                check.details.append(f"JWKS {url}: " + self.budget.ran_out("check 5 (JWKS)"))
            else:
                check.details.append(f"JWKS {url}: no answer within 5 s")
            return False, fix
        except (aiohttp.ClientError, ValueError, UnicodeDecodeError) as exc:
            reason = str(exc) or type(exc).__name__
            check.details.append(f"JWKS {url}: could not be fetched ({reason})")
            return False, fix

        usable = signing_keys(document, algorithms)
        listed = []
        raw = document.get("keys") if isinstance(document, dict) else None
        for jwk in raw if isinstance(raw, list) else []:
            if not isinstance(jwk, dict):
                continue
            kid = jwk.get("kid")
            kty = jwk.get("kty")
            kind = f"{kty} {jwk['crv']}" if jwk.get("crv") else str(kty)
            if isinstance(kid, str) and kid in usable:
                algs = list(usable[kid].algorithms)
                listed.append({"kid": kid, "kty": kty, "algorithms": algs, "usable": True})
                check.details.append(f"JWKS key {kid!r}: {kind}, {', '.join(algs)}")
            else:
                why = (
                    "symmetric keys are never taken from a JWKS"
                    if kty == "oct"
                    else "no kid, not a signature key, or no algorithm allowed by "
                    "BROKER_JWT_ALGORITHMS"
                )
                listed.append(
                    {
                        "kid": kid if isinstance(kid, str) else None,
                        "kty": kty,
                        "algorithms": [],
                        "usable": False,
                    }
                )
                check.details.append(f"JWKS key {kid!r}: {kind}, ignored ({why})")
        check.data["jwks_keys"] = listed
        if not usable:
            check.details.append(f"JWKS {url}: no usable signature key")
            return False, fix
        return True, None

    async def _verify_token(self, check: Check, s: Settings) -> tuple[bool, str | None]:
        token = self.token or ""
        result: dict[str, Any] = {
            "valid": False,
            "verified": s.jwt.configured,
            "user": None,
            "claims": None,
            "error": None,
            "workflows": [],
        }
        check.data["token"] = result
        j = s.jwt
        jwks = (
            JWKSCache(
                j.jwks_url, self.http, algorithms=j.asymmetric_algorithms, timeout=j.jwks_timeout
            )
            if j.jwks_url
            else None
        )
        verifier = Verifier(j, jwks)
        try:
            async with asyncio.timeout(max(self.budget.remaining, 0.001)):
                if j.configured:
                    identity = await verifier.verify(token)
                else:
                    identity = verifier.read_unverified(token)
        except TimeoutError:
            result["error"] = self.budget.ran_out("check 5 (--token)")
            check.details.append(f"--token: {result['error']}")
            return False, "raise --timeout"
        except BrokerError as exc:
            result["error"] = exc.message
            check.details.append(f"--token refused: {exc.message}")
            if isinstance(exc, Unauthenticated):
                return (
                    False,
                    "the message says what is wrong; the service would answer 401 to this token",
                )
            return False, "the JWKS could not be fetched: see above"
        claims = dict(identity.claims)
        allowed = [w.name for w in s.workflows if not unmet_requirements(w, claims)]
        result.update(valid=True, user=identity.user, claims=claims, workflows=allowed)
        verified = "verified" if j.configured else "read WITHOUT verification (mock mode, no key)"
        exp = claims.get("exp")
        left = (
            f", expires in {_duration(exp - time.time())}" if isinstance(exp, int | float) else ""
        )
        check.details.append(
            f"--token {verified}: ChatKit user {identity.user!r} (claim {j.user_claim}){left}"
        )
        check.details.append("claims: " + json.dumps(claims, sort_keys=True, default=str)[:2000])
        check.details.append(
            "may use workflows: "
            + (", ".join(allowed) or "none (their 'require' claims are unmet)")
        )
        return True, None

    # --- 6. domains ---------------------------------------------------------------------------------

    def check_domains(self) -> Check:
        check = Check("domains", "Domains")
        check.data = {"origins": []}
        s = self.settings
        if s is None:
            return check.set(SKIP, "skipped: the configuration is invalid (check 1)")
        public = []
        wildcard = []
        for origin in s.allowed_origins:
            host = urlsplit(origin).hostname or ""
            local = host in LOOPBACK_HOSTS or host.endswith(".localhost")
            check.data["origins"].append({"origin": origin, "needs_allowlist": not local})
            if "*" in host:
                wildcard.append(origin)
            if local:
                check.details.append(f"{origin}: localhost, needs no allowlist entry")
            else:
                public.append(host)
                check.details.append(f"{origin}: {host} must be on OpenAI's domain allowlist")
        if not s.allowed_origins:
            check.details.append(
                "BROKER_ALLOWED_ORIGINS is empty: only pages served from the broker's own origin "
                "may call it (no CORS)"
            )
        check.details.append(
            "Hosted ChatKit only loads on hostnames listed at "
            f"{DOMAIN_ALLOWLIST_URL} (exact names, no wildcards; localhost needs none) — "
            "including the broker's own hostname if it serves the page."
        )
        if wildcard:
            return check.set(
                WARN,
                f"{', '.join(wildcard)}: wildcards match no origin",
                "list every origin in BROKER_ALLOWED_ORIGINS (OpenAI's allowlist has no "
                "wildcards either)",
            )
        if public:
            names = ", ".join(dict.fromkeys(public))
            n = len(dict.fromkeys(public))
            return check.set(
                PASS,
                f"{n} public hostname{'s' * (n != 1)} to put on OpenAI's domain allowlist: {names}",
            )
        if s.allowed_origins:
            return check.set(PASS, "localhost only: no allowlist entry needed")
        return check.set(
            PASS, "same origin only: its public hostname must be on OpenAI's allowlist"
        )


# --- rendering --------------------------------------------------------------------------------------


def _api_message(body: bytes) -> str:
    try:
        message = json.loads(body)["error"]["message"]
        if isinstance(message, str):
            return message[:300]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        pass
    return "(no error message)" if not body else repr(body[:120])


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError):
        return False


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 0:
        return f"-{_duration(-seconds)} (expired)"
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{round(seconds / 3600)} h"


def _wrap(text: str, indent: int, width: int, hang: int = 2) -> list[str]:
    return textwrap.wrap(
        text,
        width=max(width, indent + 40),
        initial_indent=" " * indent,
        subsequent_indent=" " * (indent + hang),
        break_long_words=False,
        break_on_hyphens=False,
    ) or [""]


def render_width() -> int:
    """``COLUMNS`` when set, else the terminal's width, at most 100 (and 100 when piped)."""
    if os.environ.get("COLUMNS", "").isdigit():
        return max(60, int(os.environ["COLUMNS"]))
    return max(60, min(100, shutil.get_terminal_size((100, 24)).columns))


def render_text(report: Report, width: int = 100) -> str:
    """The terminal report: one ✔/⚠/✖ line per check, its details, and a fix where needed."""
    lines = ["chatkit-broker doctor", ""]

    def block(c: Check, head: str, at: int, indent: int) -> None:
        lines.extend(_wrap(f"{head}{c.title}: {c.summary}", at, width, indent - at))
        for d in c.details:
            lines.extend(_wrap(d, indent, width))
        if c.fix and c.status != PASS:
            lines.extend(_wrap(f"fix: {c.fix}", indent, width, 5))

    for n, check in enumerate(report.checks, 1):
        if check.items:
            head = f"{SYMBOLS[check.status]} {n}. {check.title}: {check.summary}"
            lines.extend(_wrap(head, 0, width, 5))
            for item in check.items:
                block(item, f"{SYMBOLS[item.status]} ", 5, 7)
        else:
            block(check, f"{SYMBOLS[check.status]} {n}. ", 0, 5)
    lines.append("")
    failed = [f"{n}. {c.title}" for n, c in enumerate(report.checks, 1) if c.status == FAIL]
    warned = [f"{n}. {c.title}" for n, c in enumerate(report.checks, 1) if c.status == WARN]
    took = f"{report.elapsed:.1f} s"
    if failed:
        s = "s" if len(failed) != 1 else ""
        lines.append(f"✖ {len(failed)} check{s} failed ({', '.join(failed)}); exit 1. Took {took}.")
    elif warned:
        lines.append(f"✔ No check failed; warnings in {', '.join(warned)}. Took {took}.")
    else:
        lines.append(f"✔ All checks passed. Took {took}.")
    if report.timed_out:
        lines.append(
            f"  The --timeout budget of {report.timeout:g} s ran out during {report.timed_out}."
        )
    return "\n".join(lines)


_ASCII = str.maketrans({"✔": "+", "⚠": "!", "✖": "x", "○": "-", "…": "...", "—": "-", "→": "->"})


def for_stream(text: str, encoding: str | None, *, as_json: bool) -> str:
    """The report as the output stream can encode it (a latin-1 or ASCII terminal, say).

    JSON falls back to ``\\u`` escapes, which are still the same JSON; text to ASCII symbols.
    """
    try:
        text.encode(encoding or "utf-8")
        return text
    except (UnicodeEncodeError, LookupError):
        pass
    if as_json:
        return text.encode("ascii", "backslashreplace").decode("ascii")
    return text.translate(_ASCII).encode("ascii", "replace").decode("ascii")


def render_json(report: Report) -> str:
    return json.dumps(report.as_dict(), indent=2, ensure_ascii=False)


def scrub(text: str, secrets: set[str]) -> str:
    """Last line of defence: no full key, JWT or client secret leaves this command."""
    for secret in sorted((x for x in secrets if len(x) >= 8), key=len, reverse=True):
        text = text.replace(secret, mask(secret))
    return redact(text)


def run_doctor(
    env: Mapping[str, str],
    shell: Mapping[str, str],
    dotenv: Mapping[str, str],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    token: str | None = None,
    as_json: bool = False,
) -> tuple[int, str]:
    """Run every check; return the exit code and the report to print."""
    broker_log = logging.getLogger("broker")
    saved = broker_log.propagate, broker_log.level
    broker_log.propagate = False  # the report says it all; no stray warnings on stderr
    silent = logging.NullHandler()
    broker_log.addHandler(silent)
    try:
        doctor = Doctor(env, shell, dotenv, timeout=timeout, token=token)
        report = asyncio.run(doctor.run())
    finally:
        broker_log.removeHandler(silent)  # one handler per call would pile up otherwise
        broker_log.propagate, broker_log.level = saved
    text = render_json(report) if as_json else render_text(report, render_width())
    return report.exit_code, scrub(text, doctor.secrets)
