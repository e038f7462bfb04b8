"""What the load tests through the custom kinds share: a backend in its own process, users
chatting over ChatKit streams with a unique nonce in every message, and the broker's memory
sampled while they do.

A turn is one ``threads.create`` or ``threads.add_user_message`` streamed to the end; what
the user saw (thread id, reply text, error events) is kept for the test to check against the
backend's own record of the turn.

A run has two phases, both ended by answered turns, not by a clock (on a busy machine they
simply take longer, and a leak per turn grows the broker as much). The warm-up lasts until
every user has had ``WARM_UP_TURNS`` turns answered: by then every request type has run at
full concurrency, and pools, caches and allocator arenas have their working size. The
measured phase follows, until every user has had ``measured`` turns more, with the broker's
RSS sampled twice a second; memory that still grows then grows per turn.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# turns every user has had answered before memory is measured: a threads.create and an
# add_user_message each. Measured on a broker hosting the agent (100 users, 25 s phases): RSS
# climbed 157 → 209 MiB while the users' first turns ran, then stayed at 219-221 MiB over the
# next 327 turns; the 245 → 276 MiB a 60 s run once saw "over its second half" was that climb
# on a machine too busy for the first turns to have finished by then.
WARM_UP_TURNS = 2
# a run whose phases have not ended after this long stops (the test then fails on the users
# short of their turns)
RUN_TIMEOUT = 600.0
SAMPLE_EVERY = 0.5  # seconds between RSS samples
ENDS = 4  # samples averaged at each end of the measured phase


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


class Clock:
    """The two phases, ended by answered turns (events, not a clock): the warm-up, until every
    user has had ``WARM_UP_TURNS`` turns answered (``warm``), and the measured phase, until
    every user has had ``measured`` more (``done``). Users who get there first keep chatting,
    so the load stays the same until the last one does."""

    def __init__(self, users: int, measured: int) -> None:
        self.end_turns = WARM_UP_TURNS + measured
        self.short_of_warm = users
        self.short_of_end = users
        self.warm = asyncio.Event()
        self.done = asyncio.Event()
        self.cut_short = False

    def answered(self, user: User) -> None:
        if len(user.turns) == WARM_UP_TURNS:
            self.short_of_warm -= 1
            if self.short_of_warm == 0:
                self.warm.set()
        if len(user.turns) == self.end_turns:
            self.short_of_end -= 1
            if self.short_of_end == 0:
                self.done.set()

    def failed(self) -> None:
        """A turn failed: in the warm-up, the run stops at once (the test fails on it)."""
        if not self.warm.is_set():
            self.stop()

    def stop(self) -> None:
        self.cut_short = True
        self.warm.set()
        self.done.set()

    def running(self) -> bool:
        return not self.done.is_set()


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


async def chat(session: aiohttp.ClientSession, url: str, user: User, clock: Clock) -> None:
    """Send messages as ``user`` until the clock stops, each carrying a nonce no one else sends."""
    headers = {"Authorization": f"Bearer {user.credential}"}
    thread_id: str | None = None
    in_thread = 0
    n = 0
    while clock.running():
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
                    clock.failed()
                    thread_id = None
                    continue
                created, reply, errors = await read_stream(resp)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            user.failures.append(type(exc).__name__)
            clock.failed()
            thread_id = None
            continue
        if errors:
            user.failures.append(f"error event {errors}")
            clock.failed()
            thread_id = None
            continue
        thread_id = created or thread_id
        if thread_id is None:
            user.failures.append("threads.create streamed no thread.created")
            clock.failed()
            continue
        in_thread += 1
        user.turns.append(Turn(thread_id, nonce, reply))
        user.latencies.append(time.monotonic() - started)
        clock.answered(user)


async def sample_rss(pid: int, samples: list[tuple[float, float]], done: asyncio.Event) -> None:
    """RSS of ``pid`` every ``SAMPLE_EVERY`` seconds until ``done``: (seconds, MiB)."""
    started = time.monotonic()
    while not done.is_set():
        samples.append((time.monotonic() - started, rss_mib(pid)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), SAMPLE_EVERY)
    samples.append((time.monotonic() - started, rss_mib(pid)))


def rss_ends(samples: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Mean RSS of the first and last ``ENDS`` samples of the measured phase; the caller
    asserts the growth is under max(8 MiB, 10 %)."""
    mib = [m for _, m in samples]
    return statistics.mean(mib[:ENDS]), statistics.mean(mib[-ENDS:])


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
    session: aiohttp.ClientSession, pid: int, url: str, users: Sequence[User], measured: int
) -> tuple[list[tuple[float, float]], float, float]:
    """Every user chats at ``url`` through the warm-up and then ``measured`` more turns each,
    while process ``pid``'s memory is sampled; the samples of the measured phase, the seconds
    the warm-up took and the seconds the whole run took."""
    rss: list[tuple[float, float]] = []
    clock = Clock(len(users), measured)
    started = time.monotonic()

    async def measure() -> float:
        try:
            await asyncio.wait_for(clock.warm.wait(), RUN_TIMEOUT)
        except TimeoutError:
            clock.stop()
        warm_up = time.monotonic() - started
        if not clock.cut_short:
            try:
                await asyncio.wait_for(sample_rss(pid, rss, clock.done), RUN_TIMEOUT)
            except TimeoutError:
                clock.stop()
        return warm_up

    warm_up, *_ = await asyncio.gather(measure(), *(chat(session, url, u, clock) for u in users))
    return rss, warm_up, time.monotonic() - started


def assert_every_turn_answered(users: Sequence[User]) -> None:
    failures = Counter(f for u in users for f in u.failures)
    assert not failures, f"{sum(failures.values())} failed turns: {failures.most_common(5)}"
    turns = Counter(len(u.turns) for u in users)
    assert min(turns) >= WARM_UP_TURNS, f"a run cut short: users by turns answered {turns}"


def assert_flat_memory(rss: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """The broker's memory over the measured phase grew by less than max(8 MiB, 10 %)."""
    early, late = rss_ends(rss)
    assert late - early < max(8.0, 0.1 * early), f"RSS grew {early:.1f} → {late:.1f} MiB: {rss}"
    return early, late


def summary(
    users: Sequence[User], rss: Sequence[tuple[float, float]], early: float, late: float
) -> str:
    """Turn latencies and the broker's memory, as the load tests print them."""
    latencies = [x for u in users for x in u.latencies]
    return (
        f"turn p50 {percentile(latencies, 0.5) * 1000:.0f} ms "
        f"p99 {percentile(latencies, 0.99) * 1000:.0f} ms; broker RSS after the warm-up "
        f"{rss[0][1]:.0f} → peak {max(m for _, m in rss):.0f} → end {rss[-1][1]:.0f} MiB "
        f"(first and last two seconds {early:.1f} → {late:.1f})"
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
