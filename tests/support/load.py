"""What the load tests through the custom kinds share: a backend in its own process, users
chatting over ChatKit streams with a unique nonce in every message, and the broker's memory
sampled once a second.

A turn is one ``threads.create`` or ``threads.add_user_message`` streamed to the end; what
the user saw (thread id, reply text, error events) is kept for the test to check against the
backend's own record of the turn.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from .adversarial import SecretWatch, make_token, rss_mib
from .chatkit_bodies import create, user_input
from .env import ROOT, auth
from .mint import MINT

TURNS_PER_THREAD = 5  # then a new thread: both request types, histories stay short


@dataclass
class Turn:
    thread_id: str
    nonce: str
    reply: str


@dataclass
class User:
    name: str
    credential: str  # a JWT or a cks_ session secret
    turns: list[Turn] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


async def read_stream(resp: aiohttp.ClientResponse) -> tuple[str | None, str, list[str]]:
    """(thread id if created, the assistant's final text, error events) of one SSE answer."""
    thread_id, reply, errors = None, "", []
    buffer = b""
    async for chunk in resp.content.iter_any():
        buffer += chunk
        while b"\n\n" in buffer:
            frame, buffer = buffer.split(b"\n\n", 1)
            data = b"".join(
                line[5:].strip() for line in frame.split(b"\n") if line.startswith(b"data:")
            )
            if not data:
                continue
            event = json.loads(data)
            kind = event.get("type")
            if kind == "thread.created":
                thread_id = event["thread"]["id"]
            elif kind == "thread.item.done" and event["item"].get("type") == "assistant_message":
                reply += "".join(part.get("text", "") for part in event["item"]["content"])
            elif kind == "error":
                errors.append(str(event.get("code") or "error"))
    return thread_id, reply, errors


async def chat(session: aiohttp.ClientSession, url: str, user: User, stop_at: float) -> None:
    """Send messages as ``user`` until ``stop_at``, each carrying a nonce no one else sends."""
    headers = {"Authorization": f"Bearer {user.credential}"}
    thread_id: str | None = None
    in_thread = 0
    n = 0
    while time.monotonic() < stop_at:
        n += 1
        nonce = f"{user.name} says {n} {secrets.token_hex(6)}"
        if thread_id is None or in_thread >= TURNS_PER_THREAD:
            body = create(nonce)
            thread_id, in_thread = None, 0
        else:
            body = {
                "type": "threads.add_user_message",
                "params": {"thread_id": thread_id, "input": user_input(nonce)},
            }
        started = time.monotonic()
        try:
            async with session.post(url, json=body, headers=headers) as resp:
                if resp.status != 200:
                    data = await resp.json(content_type=None)
                    user.failures.append(f"{resp.status} {data.get('error', {}).get('code')}")
                    thread_id = None
                    continue
                created, reply, errors = await read_stream(resp)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            user.failures.append(type(exc).__name__)
            thread_id = None
            continue
        if errors:
            user.failures.append(f"error event {errors}")
            thread_id = None
            continue
        thread_id = created or thread_id
        if thread_id is None:
            user.failures.append("threads.create streamed no thread.created")
            continue
        in_thread += 1
        user.turns.append(Turn(thread_id, nonce, reply))
        user.latencies.append(time.monotonic() - started)


async def sample_rss(pid: int, samples: list[tuple[float, float]], stop_at: float) -> None:
    started = time.monotonic()
    while time.monotonic() < stop_at:
        samples.append((time.monotonic() - started, rss_mib(pid)))
        await asyncio.sleep(1)


def rss_second_half(samples: Sequence[tuple[float, float]], seconds: float) -> tuple[float, float]:
    """Mean RSS of the first and last five samples of the second half (as tests/adversarial/test_load.py);
    the caller asserts the growth is under max(8 MiB, 10 %)."""
    second_half = [mib for t, mib in samples if t >= seconds / 2]
    return statistics.mean(second_half[:5]), statistics.mean(second_half[-5:])


async def sign_in(
    session: aiohttp.ClientSession,
    broker_url: str,
    workflow: str,
    names: Sequence[str],
    watch: SecretWatch,
) -> list[tuple[User, dict[str, Any]]]:
    """Each of ``names`` signs in and mints a session for ``workflow`` (which must succeed);
    each user, holding the secret it got, with the mint's answer. Both secrets are watched."""
    signed_in = []
    for name in names:
        jwt = make_token(name)
        async with session.post(
            broker_url + MINT, json={"workflow": workflow}, headers=auth(jwt)
        ) as r:
            minted = await r.json()
            assert r.status == 200, minted
        watch.add(jwt, minted["client_secret"])
        signed_in.append((User(name, minted["client_secret"]), minted))
    return signed_in


async def chat_for(
    session: aiohttp.ClientSession, pid: int, url: str, users: Sequence[User], seconds: float
) -> tuple[list[tuple[float, float]], float]:
    """Every user chats at ``url`` for ``seconds`` while process ``pid``'s memory is sampled;
    the samples and the seconds it took."""
    rss: list[tuple[float, float]] = []
    started = time.monotonic()
    stop_at = started + seconds
    await asyncio.gather(
        sample_rss(pid, rss, stop_at), *(chat(session, url, u, stop_at) for u in users)
    )
    return rss, time.monotonic() - started


def assert_every_turn_answered(users: Sequence[User]) -> None:
    failures = Counter(f for u in users for f in u.failures)
    assert not failures, f"{sum(failures.values())} failed turns: {failures.most_common(5)}"
    assert all(u.turns for u in users), "a user never got a reply"


def assert_flat_memory(rss: Sequence[tuple[float, float]], seconds: float) -> tuple[float, float]:
    """The broker's memory over the second half grew by less than max(8 MiB, 10 %)."""
    early, late = rss_second_half(rss, seconds)
    assert late - early < max(8.0, 0.1 * early), f"RSS grew {early:.1f} → {late:.1f} MiB: {rss}"
    return early, late


def summary(
    users: Sequence[User], rss: Sequence[tuple[float, float]], early: float, late: float
) -> str:
    """Turn latencies and the broker's memory, as the load tests print them."""
    latencies = [x for u in users for x in u.latencies]
    return (
        f"turn p50 {percentile(latencies, 0.5) * 1000:.0f} ms "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms; broker RSS {rss[0][1]:.0f} → "
        f"peak {max(m for _, m in rss):.0f} → end {rss[-1][1]:.0f} MiB (second half "
        f"{early:.1f} → {late:.1f})"
    )


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else 0.0


@dataclass
class Spawned:
    """A backend process (``python -m <module> …``) that printed its URL or is polled for it."""

    proc: subprocess.Popen[bytes]
    log_path: Path

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextmanager
def spawn(
    module: str, *args: str, log_path: Path, url_on_stdout: bool
) -> Iterator[tuple[Spawned, str]]:
    """Run ``python -m module args`` from the project root, stderr to ``log_path``; yields it
    and, when it prints one, the URL on its first stdout line. Stopped (and its log handed to
    the suite's log audit) afterwards."""
    from . import log_audit

    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            stdout=subprocess.PIPE if url_on_stdout else log,
            stderr=log,
        )
    spawned = Spawned(proc, log_path)
    try:
        url = ""
        if url_on_stdout:
            assert proc.stdout is not None
            url = proc.stdout.readline().decode().strip()
            assert url.startswith("http://"), (url, spawned.logs())
        yield spawned, url
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        log_audit.collect_file(log_path)
