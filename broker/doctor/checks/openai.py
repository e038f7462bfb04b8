"""Check 3: the key works (``GET /models``), and which organization and project OpenAI answers for.

Asked with the hosted client's own headers, so what passes here is what the service sends.
The project OpenAI names is handed on as ``KeyWorks``: a hosted 404 is explained with it.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

import aiohttp

from ...backends.hosted.client import UpstreamConfig, api_headers, error_message
from ...httpread import read_capped
from ...settings import Settings
from ..context import DoctorContext
from ..report import Check, Status
from .key import API_KEYS_URL, KeyFacts

MAX_MODELS_BYTES = 1024 * 1024


@dataclass(frozen=True)
class KeyWorks:
    """What the workflows check needs from this one."""

    passed: bool  # the key was accepted (pass or warn): minting is worth trying
    project: str | None = None  # the project OpenAI answered for, when it said


def api_message(body: bytes) -> str:
    """OpenAI's error message for the report (shorter than the log's), or what the body was."""
    message = error_message(body)
    if message is not None:
        return message[:300]
    return "(no error message)" if not body else repr(body[:120])


def _is_json_object(body: bytes) -> bool:
    try:
        return isinstance(json.loads(body), dict)
    except (ValueError, UnicodeDecodeError):
        return False


async def check(ctx: DoctorContext, key: KeyFacts) -> tuple[Check, KeyWorks]:
    check = Check("key_works", "Key and project")
    s = ctx.settings
    check.data = {
        "base_url": s.openai_base_url if s else None,
        "http_status": None,
        "organization": None,
        "project": None,
        "request_id": None,
    }
    skipped = KeyWorks(passed=False)
    if s is None:
        return check.set(Status.SKIP, "skipped: the configuration is invalid (check 1)"), skipped
    if s.mock:
        return check.set(Status.SKIP, "skipped: mock mode makes no OpenAI calls"), skipped
    if not key.usable or s.openai_api_key is None:
        return check.set(Status.SKIP, "skipped: no usable API key (check 2)"), skipped
    budget = ctx.budget
    if budget.exhausted:
        return check.set(Status.FAIL, budget.skipped()), skipped

    url = f"{s.openai_base_url}/models"
    headers = api_headers(UpstreamConfig.from_settings(s))
    limit, by_budget = budget.limit(s.upstream_timeout)
    try:
        async with (
            asyncio.timeout(limit),
            ctx.http().get(url, headers=headers, allow_redirects=False) as resp,
        ):
            status, answered = resp.status, resp.headers
            # one read(n) returns the first chunk only: a chunked body would be cut short
            body = await read_capped(resp.content, MAX_MODELS_BYTES)
    except TimeoutError:
        if by_budget:
            return check.set(
                Status.FAIL,
                budget.ran_out("check 3 (GET /models)"),
                "raise --timeout, or check the network path to OPENAI_BASE_URL",
            ), skipped
        return check.set(
            Status.FAIL,
            f"OpenAI did not answer GET {url} within {limit:g} s (BROKER_UPSTREAM_TIMEOUT)",
            "check the network path to OPENAI_BASE_URL (proxy, firewall), then try again",
        ), skipped
    except aiohttp.ClientError as exc:
        return check.set(
            Status.FAIL,
            f"could not reach {url}: {str(exc)[:200] or type(exc).__name__}",
            "check OPENAI_BASE_URL and the network (DNS, proxy, firewall)",
        ), skipped

    org, project = answered.get("openai-organization"), answered.get("openai-project")
    request_id = answered.get("x-request-id")
    check.data.update(http_status=status, organization=org, project=project, request_id=request_id)
    _judge(check, s, url, status, body)
    passed = check.status in (Status.PASS, Status.WARN)
    return check, KeyWorks(passed=passed, project=project)


def _judge(check: Check, s: Settings, url: str, status: int, body: bytes) -> None:
    """Turn OpenAI's answer to ``GET /models`` into the check's status, summary and fix."""
    base_url, want_org, want_project = s.openai_base_url, s.openai_organization, s.openai_project
    org, project = check.data["organization"], check.data["project"]
    request_id = check.data["request_id"]
    said = f"HTTP {status}" + (f", request {request_id}" if request_id else "")
    if status == 401:
        check.set(
            Status.FAIL,
            f"OpenAI refused the key ({said}): {api_message(body)}",
            "create a key in the project that owns your workflows "
            f"({API_KEYS_URL}) and put it in CHATKIT_OPENAI_API_KEY",
        )
        return
    if status == 403:
        check.details.append(f"OpenAI: {api_message(body)}")
        check.set(
            Status.WARN,
            f"the key may not list models ({said}); restricted keys can lack that permission",
            "nothing to do if the workflows below mint; else give the key ChatKit access",
        )
        return
    if status == 404:
        check.set(
            Status.FAIL,
            f"GET {url} answered 404: this is not the OpenAI API root",
            f"set OPENAI_BASE_URL to https://api.openai.com/v1 (it ends in /v1), got {base_url}",
        )
        return
    if status != 200 or not _is_json_object(body):
        what = "a body that is not the API's JSON" if status == 200 else said
        check.details.append(f"OpenAI: {api_message(body)}")
        check.set(
            Status.FAIL if status < 500 and status != 429 else Status.WARN,
            f"GET {url} answered {what}",
            "check OPENAI_BASE_URL; if OpenAI is busy or down, try again shortly",
        )
        return

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
    if want_project and project and project != want_project:
        problems.append(
            f"OPENAI_PROJECT is {want_project} but the API answered for project {project}"
        )
    if want_org and org and org != want_org:
        if org.startswith("org-"):
            problems.append(
                f"OPENAI_ORGANIZATION is {want_org} but the API answered for organization {org}"
            )
        else:
            check.details.append(
                f"(the API names the organization {org!r}, not by id, so it cannot be "
                f"compared with OPENAI_ORGANIZATION={want_org})"
            )
    if problems:
        check.details.extend(problems)
        check.set(
            Status.WARN,
            summary,
            "make OPENAI_ORGANIZATION / OPENAI_PROJECT match the key's, or unset them",
        )
        return
    check.set(Status.PASS, summary)
