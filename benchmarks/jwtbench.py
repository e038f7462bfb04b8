"""Per-request cost of JWT verification (HS256, ES256), measured with timeit.

`jwt.decode` is called as a verifier must call it: algorithms pinned, `exp` and `sub`
required. ES256 is timed twice: with the key object loaded once, and with the key
taken from a JWKS document (`PyJWK`, parsed once), which is what JWKS mode does.
"""

from __future__ import annotations

import json
import statistics
import time
import timeit
from collections.abc import Callable
from dataclasses import asdict, dataclass

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from . import procs

HS_SECRET = "bench-hs256-secret-" + "x" * 32  # >= 32 bytes, as BROKER_JWT_SECRET demands
KID = "bench-es256"


@dataclass
class Timing:
    name: str
    us_per_call: float  # median of the repeats
    best_us: float
    calls: int

    def row(self) -> dict:
        return asdict(self)


def time_call(
    name: str, fn: Callable[[], object], repeat: int = 5, min_time: float = 0.2
) -> Timing:
    fn()  # warm up (and fail fast if it raises)
    timer = timeit.Timer(fn)
    number = 1
    while True:  # like Timer.autorange, but aiming at min_time per repeat
        if timer.timeit(number) >= min_time / 4:
            break
        number *= 4
    number *= 4
    runs = [timer.timeit(number) / number * 1e6 for _ in range(repeat)]
    return Timing(name, statistics.median(runs), min(runs), number * repeat)


def claims(sub: str = "user1", ttl: int = 3600) -> dict:
    now = int(time.time())
    return {"sub": sub, "iat": now, "exp": now + ttl}


def es256_keypair() -> tuple[ec.EllipticCurvePrivateKey, dict]:
    """A P-256 key and its public JWK (with kid, alg, use)."""
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = jwt.algorithms.ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
    jwk.update({"kid": KID, "alg": "ES256", "use": "sig"})
    return key, jwk


def pyjwt_timings(quick: bool = False) -> list[Timing]:
    repeat, min_time = (3, 0.05) if quick else (5, 0.2)
    opts = {"require": ["exp", "sub"]}
    hs_token = jwt.encode(claims(), HS_SECRET, algorithm="HS256")
    es_key, jwk = es256_keypair()
    es_token = jwt.encode(claims(), es_key, algorithm="ES256", headers={"kid": KID})
    es_pub = es_key.public_key()
    jwk_key = jwt.PyJWK(jwk).key
    return [
        time_call(
            "PyJWT decode HS256",
            lambda: jwt.decode(hs_token, HS_SECRET, algorithms=["HS256"], options=opts),
            repeat,
            min_time,
        ),
        time_call(
            "PyJWT decode ES256 (key object)",
            lambda: jwt.decode(es_token, es_pub, algorithms=["ES256"], options=opts),
            repeat,
            min_time,
        ),
        time_call(
            "PyJWT decode ES256 (key from JWKS)",
            lambda: jwt.decode(es_token, jwk_key, algorithms=["ES256"], options=opts),
            repeat,
            min_time,
        ),
        time_call(
            "PyJWT encode HS256 (for scale)",
            lambda: jwt.encode(claims(), HS_SECRET, algorithm="HS256"),
            repeat,
            min_time,
        ),
    ]


def _drive(coro):
    """Run a coroutine that must not suspend; its result, or an error if it would wait."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the verifier suspended: it waited on I/O on the hot path")


def _base_env() -> dict[str, str]:
    return {
        "OPENAI_API_KEY": "sk-bench-" + "0" * 32,
        "BROKER_WORKFLOWS": "bench=wf_" + "0" * 48,
    }


def broker_timings(quick: bool = False) -> tuple[list[Timing], dict]:
    """The broker's own `Verifier.verify` (broker/auth.py), per configured key kind.

    `verify` is a coroutine; for a known key it never suspends, so it is driven with
    `send(None)` and any suspension (a JWKS fetch) is an error. The JWKS case runs
    against a loopback JWKS server: one fetch at warm-up, then none may follow.
    """
    import asyncio

    from cryptography.hazmat.primitives import serialization

    from broker.auth import Verifier
    from broker.config import load_settings
    from broker.http import HttpPool
    from broker.jwks import JWKSCache

    repeat, min_time = (3, 0.05) if quick else (5, 0.2)
    es_key, jwk = es256_keypair()
    pem = (
        es_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    hs_token = jwt.encode(claims(), HS_SECRET, algorithm="HS256")
    es_token = jwt.encode(claims(), es_key, algorithm="ES256", headers={"kid": KID})

    def uncached(settings, jwks: JWKSCache | None = None) -> Verifier:
        """A Verifier that checks every call (without its verified-token cache, if it has one)."""
        try:
            return Verifier(settings, jwks, cache_size=0)
        except TypeError:  # a broker without the cache
            return Verifier(settings, jwks)

    def verifier(extra: dict[str, str]) -> Verifier:
        return uncached(load_settings({**_base_env(), **extra}).jwt)

    hs = verifier({"BROKER_JWT_SECRET": HS_SECRET})
    pem_v = verifier({"BROKER_JWT_PUBLIC_KEY": pem})
    hs_cached = Verifier(load_settings({**_base_env(), "BROKER_JWT_SECRET": HS_SECRET}).jwt)
    timings = [
        time_call("broker Verifier HS256", lambda: _drive(hs.verify(hs_token)), repeat, min_time),
        time_call(
            "broker Verifier HS256, token seen before (its cache, if any)",
            lambda: _drive(hs_cached.verify(hs_token)),
            repeat,
            min_time,
        ),
        time_call(
            "broker Verifier ES256 (PEM key)",
            lambda: _drive(pem_v.verify(es_token)),
            repeat,
            min_time,
        ),
    ]

    server = _JwksServer({"keys": [jwk]})
    pool = HttpPool()
    try:
        settings = load_settings({**_base_env(), "BROKER_JWT_JWKS_URL": server.url}).jwt
        cache = JWKSCache(server.url, pool, algorithms=settings.asymmetric_algorithms)

        async def warm() -> None:
            await uncached(settings, cache).verify(es_token)  # first use fetches the key set
            await pool.close()  # from here on, a fetch could not even reach the server

        asyncio.run(warm())
        fetches_warm, hits_warm = cache.fetches, server.hits
        jwks_v = uncached(settings, cache)
        t = time_call(
            "broker Verifier ES256 (JWKS, warm cache)",
            lambda: _drive(jwks_v.verify(es_token)),
            repeat,
            min_time,
        )
        timings.append(t)
        check = {
            "verifications": t.calls + 1,
            "fetches_at_warmup": fetches_warm,
            "fetches_after_warmup": cache.fetches - fetches_warm,
            "http_hits_after_warmup": server.hits - hits_warm,
            "suspended": False,  # _drive raised otherwise
        }
        check["passed"] = (
            check["fetches_after_warmup"] == 0 and check["http_hits_after_warmup"] == 0
        )
    finally:
        server.close()
    return timings, check


def run(quick: bool = False, with_broker: bool = True) -> dict:
    timings = pyjwt_timings(quick)
    out: dict = {}
    if with_broker:
        try:
            more, check = broker_timings(quick)
        except (ImportError, RuntimeError) as exc:
            out["broker_error"] = f"{type(exc).__name__}: {exc}"
        else:
            timings += more
            out["jwks_in_process"] = check
    lines = [
        "| JWT verification (one call) | µs median | µs best |",
        "| --- | ---: | ---: |",
        *(f"| {t.name} | {t.us_per_call:.1f} | {t.best_us:.1f} |" for t in timings),
    ]
    if "jwks_in_process" in out:
        c = out["jwks_in_process"]
        mark = "PASS" if c["passed"] else "MISS"
        lines.append(
            f"\n- {mark} broker Verifier in JWKS mode: {c['fetches_at_warmup']} fetch at warm-up, then "
            f"{c['verifications']:,} verifications with {c['fetches_after_warmup']} fetches, "
            f"{c['http_hits_after_warmup']} HTTP requests to the JWKS server, none suspended"
        )
    if "broker_error" in out:
        lines.append(f"\n- broker Verifier not measured: {out['broker_error']}")
    out.update({"timings": [t.row() for t in timings], "markdown": "\n".join(lines)})
    return out


# ----------------------------------------------------- JWKS mode, end to end


class _JwksServer:
    """A loopback JWKS endpoint in a thread of the runner, counting every fetch."""

    def __init__(self, jwks: dict) -> None:
        import http.server
        import threading

        body = json.dumps(jwks).encode()
        outer = self
        self.hits = 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.hits += 1
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def jwks_hot_path(bench) -> dict:
    """Broker in JWKS mode (ES256): after warm-up, a load run must fetch the JWKS 0 times,
    and a burst of tokens with an unknown `kid` at most once."""
    from . import loadgen
    from .runner import N_COLD_USERS, SESSION_PATH, TARGETS, Case

    key, jwk = es256_keypair()
    jwks = _JwksServer({"keys": [jwk]})
    # more distinct tokens than the broker's verified-token cache holds: every request
    # goes through the key lookup, not just the first use of each token
    tokens = bench.tmp / "tokens-es256.txt"
    tokens.write_text(
        "\n".join(
            jwt.encode(claims(f"user{i}"), key, algorithm="ES256", headers={"kid": KID})
            for i in range(N_COLD_USERS)
        )
        + "\n"
    )
    other, _ = es256_keypair()
    unknown = jwt.encode(
        claims("intruder"), other, algorithm="ES256", headers={"kid": "unknown-kid"}
    )
    case = Case(
        "jwks-c128", "JWKS mode (ES256), 0 ms upstream, 128 conns", "nginx", 128, 1, ("broker",)
    )
    result: dict = {"jwks_url": jwks.url, "tokens": N_COLD_USERS}
    child = None
    print(f"  jwks: broker with BROKER_JWT_JWKS_URL={jwks.url}", flush=True)
    try:
        child, base = bench.start_target(TARGETS["broker"], case, {"BROKER_JWT_JWKS_URL": jwks.url})
        result["fetches_at_start"] = jwks.hits
        bench.probe(base, TARGETS["broker"], tokens.read_text().split("\n", 1)[0])
        common = {"connections": 128, "threads": bench.args.threads, "tokens_file": tokens}
        loadgen.run_wrk(
            base + SESSION_PATH, duration=1, log_path=bench.tmp / "jwks-warm.log", **common
        )
        result["fetches_after_warmup"] = before = jwks.hits
        res = loadgen.run_wrk(
            base + SESSION_PATH,
            duration=bench.args.duration / 2,
            log_path=bench.tmp / "jwks.log",
            **common,
        )
        result.update(
            {
                "requests": res.requests,
                "rps": round(res.rps, 1),
                "p99_ms": res.p99_ms,
                "errors": res.errors,
                "fetches_during_load": jwks.hits - before,
            }
        )
        before = jwks.hits
        statuses = [_post_status(base + SESSION_PATH, unknown) for _ in range(20)]
        result["unknown_kid"] = {
            "requests": len(statuses),
            "statuses": sorted(set(statuses)),
            "fetches": jwks.hits - before,
        }
        ok = (
            result["fetches_during_load"] == 0
            and res.errors == 0
            and result["unknown_kid"]["fetches"] <= 1
            and set(statuses) == {401}
        )
        result["passed"] = ok
    except (RuntimeError, OSError, ValueError) as exc:
        result["error"] = str(exc)
        result["passed"] = False
    finally:
        if child is not None:
            child.stop()
        jwks.close()
    result["markdown"] = _jwks_markdown(result)
    return result


def _post_status(url: str, token: str) -> int:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(
        url,
        data=b'{"workflow":"bench"}',
        method="POST",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with procs.http_open(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _jwks_markdown(r: dict) -> str:
    if "error" in r:
        return f"JWKS hot path: FAILED: {r['error'].splitlines()[0][:200]}"
    mark = "PASS" if r["passed"] else "MISS"
    uk = r["unknown_kid"]
    return (
        f"- {mark} JWKS mode (ES256, 128 conns, {r['tokens']:,} distinct tokens, "
        f"{r['requests']:,} requests, {r['rps']:,.0f} req/s, "
        f"p99 {r['p99_ms']:.1f} ms, {r['errors']} errors): JWKS fetched {r['fetches_at_start']}x at start, "
        f"{r['fetches_after_warmup']}x after warm-up, {r['fetches_during_load']}x during the load run; "
        f"{uk['requests']} tokens with an unknown kid → statuses {uk['statuses']}, {uk['fetches']} refetch(es)"
    )
