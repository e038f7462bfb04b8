"""obstore against aiobotocore on the attachment path: streamed uploads and downloads of one
object to an S3-compatible server (moto's standalone server, started here), side by side.

    python -m benchmarks.s3clients [--sizes 1,20] [--ops 8] [--rounds 3]
                                   [--client-python /path/to/venv/bin/python]

Each client runs in its own fresh process (so its peak RSS is its own), the two alternating
round by round against the same server. An upload is what the broker does with a file: its
bytes arrive as 64 KiB chunks from an async iterator (the request body) and go to the bucket
without being collected; obstore gets the iterator itself (``put_async``, 5 MiB parts, as
``broker/files/storage.py`` calls it); aiobotocore, which needs a length or parts, gets the
chunks gathered into 5 MiB parts (one ``put_object`` below that, a multipart upload above),
the least a careful caller can do. A download streams the object back in 64 KiB chunks and
only counts them. Reported per client and size: CPU ms and wall ms per operation (median of
the rounds; CPU is the worker process's own, which includes the client's threads, wall is
noisy on a shared machine), and peak RSS over the client's baseline after import and connect.

aiobotocore is not a dependency (its botocore pin conflicts with the boto3 that moto's server
needs in the dev environment): install it into a separate venv, with obstore, and name that
interpreter, e.g.

    python -m venv /tmp/s3bench && /tmp/s3bench/bin/pip install aiobotocore obstore
    python -m benchmarks.s3clients --client-python /tmp/s3bench/bin/python

The figures of one run and the conclusion are in docs/files.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import secrets
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

CHUNK = 64 * 1024
PART = 5 * 1024 * 1024
CLIENTS = ("obstore", "aiobotocore")
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _rss_kib() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


async def _chunks(size: int) -> AsyncIterator[bytes]:
    """The upload as the broker reads it: 64 KiB pieces of a request body."""
    block = secrets.token_bytes(CHUNK)
    sent = 0
    while sent < size:
        piece = block[: min(CHUNK, size - sent)]
        sent += len(piece)
        await asyncio.sleep(0)
        yield piece


class Obstore:
    def __init__(self, endpoint: str, bucket: str) -> None:
        from obstore.store import S3Store

        self.store = S3Store(
            bucket, config={"endpoint": endpoint, "allow_http": True, "region": "us-east-1"}
        )

    async def start(self) -> None:
        import obstore

        await obstore.put_async(self.store, "warm", b"x")

    async def put(self, key: str, size: int) -> None:
        import obstore

        await obstore.put_async(self.store, key, _chunks(size), chunk_size=PART)

    async def get(self, key: str) -> int:
        import obstore

        got = 0
        result = await obstore.get_async(self.store, key)
        async for chunk in result.stream(min_chunk_size=CHUNK):
            got += len(chunk)
        return got

    async def delete(self, key: str) -> None:
        import obstore

        await obstore.delete_async(self.store, key)

    async def close(self) -> None:
        pass


class Aiobotocore:
    def __init__(self, endpoint: str, bucket: str) -> None:
        self.endpoint, self.bucket = endpoint, bucket

    async def start(self) -> None:
        from aiobotocore.session import get_session

        self._context = get_session().create_client("s3", endpoint_url=self.endpoint)
        self.client = await self._context.__aenter__()
        await self.client.put_object(Bucket=self.bucket, Key="warm", Body=b"x")

    async def put(self, key: str, size: int) -> None:
        parts: list[dict[str, object]] = []
        upload_id = None
        buffer = bytearray()
        async for chunk in _chunks(size):
            buffer += chunk
            if len(buffer) >= PART:
                if upload_id is None:
                    started = await self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
                    upload_id = started["UploadId"]
                answer = await self.client.upload_part(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=len(parts) + 1,
                    Body=bytes(buffer),
                )
                parts.append({"ETag": answer["ETag"], "PartNumber": len(parts) + 1})
                buffer.clear()
        if upload_id is None:
            await self.client.put_object(Bucket=self.bucket, Key=key, Body=bytes(buffer))
            return
        if buffer:
            answer = await self.client.upload_part(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=len(parts) + 1,
                Body=bytes(buffer),
            )
            parts.append({"ETag": answer["ETag"], "PartNumber": len(parts) + 1})
        await self.client.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
        )

    async def get(self, key: str) -> int:
        got = 0
        answer = await self.client.get_object(Bucket=self.bucket, Key=key)
        async with answer["Body"] as body:
            async for chunk in body.iter_chunks(CHUNK):
                got += len(chunk)
        return got

    async def delete(self, key: str) -> None:
        await self.client.delete_object(Bucket=self.bucket, Key=key)

    async def close(self) -> None:
        await self._context.__aexit__(None, None, None)


async def _work(client_name: str, endpoint: str, bucket: str, size: int, ops: int) -> dict:
    client = (Obstore if client_name == "obstore" else Aiobotocore)(endpoint, bucket)
    await client.start()
    baseline = _rss_kib()
    out: dict[str, float] = {}
    keys = [f"{client_name}-{size}-{i}" for i in range(ops)]
    for verb in ("put", "get"):
        cpu, wall = time.process_time(), time.perf_counter()
        for key in keys:
            if verb == "put":
                await client.put(key, size)
            else:
                got = await client.get(key)
                assert got == size, (got, size)
        out[f"{verb}_cpu_ms"] = (time.process_time() - cpu) / ops * 1e3
        out[f"{verb}_wall_ms"] = (time.perf_counter() - wall) / ops * 1e3
    for key in keys:  # not measured: moto keeps objects in memory
        await client.delete(key)
    await client.close()
    out["peak_rss_mib_over_baseline"] = (_rss_kib() - baseline) / 1024
    out["baseline_rss_mib"] = baseline / 1024
    return out


def _worker(argv: list[str]) -> None:
    client_name, endpoint, bucket, size, ops = argv
    result = asyncio.run(_work(client_name, endpoint, bucket, int(size), int(ops)))
    print(json.dumps(result))


def _moto(port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=0.5)
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("moto's server did not start (pip install 'moto[server]')")


def _bucket(endpoint: str, name: str) -> None:
    request = urllib.request.Request(f"{endpoint}/{name}", method="PUT")
    urllib.request.urlopen(request, timeout=5).read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1,20", help="object sizes in MB (comma-separated)")
    parser.add_argument("--ops", type=int, default=8, help="uploads and downloads per size")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--client-python", default=sys.executable)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    server = _moto(port)
    env = {**os.environ, **CREDENTIALS}
    results: dict[tuple[str, int], list[dict]] = {}
    try:
        for round_ in range(args.rounds):
            for size_mb in (int(s) for s in args.sizes.split(",")):
                order = CLIENTS if round_ % 2 == 0 else tuple(reversed(CLIENTS))
                for client_name in order:
                    bucket = f"bench-{secrets.token_hex(4)}"
                    _bucket(endpoint, bucket)
                    done = subprocess.run(
                        [
                            args.client_python,
                            __file__,
                            "--worker",
                            client_name,
                            endpoint,
                            bucket,
                            str(size_mb * 1024 * 1024),
                            str(args.ops),
                        ],
                        env=env,
                        capture_output=True,
                        text=True,
                        check=False,
                    )
                    if done.returncode:
                        raise SystemExit(
                            f"{client_name} failed (exit {done.returncode}):\n"
                            f"{done.stderr[-2000:]}{done.stdout[-500:]}"
                        )
                    results.setdefault((client_name, size_mb), []).append(
                        json.loads(done.stdout.strip().splitlines()[-1])
                    )
    finally:
        server.terminate()
        server.wait(10)
    fields = ("put_cpu_ms", "put_wall_ms", "get_cpu_ms", "get_wall_ms")
    print(
        f"{'client':<12} {'size':>5} {'put CPU ms':>11} {'put wall ms':>12} "
        f"{'get CPU ms':>11} {'get wall ms':>12} {'peak RSS +MiB':>14} {'baseline MiB':>13}"
    )
    table = []
    for (client_name, size_mb), runs in sorted(
        results.items(), key=lambda kv: (kv[0][1], kv[0][0])
    ):
        row = {f: statistics.median(r[f] for r in runs) for f in fields}
        row["peak_rss_mib_over_baseline"] = max(r["peak_rss_mib_over_baseline"] for r in runs)
        row["baseline_rss_mib"] = statistics.median(r["baseline_rss_mib"] for r in runs)
        row |= {"client": client_name, "size_mb": size_mb}
        table.append(row)
        print(
            f"{client_name:<12} {size_mb:>3} MB {row['put_cpu_ms']:>11.1f} "
            f"{row['put_wall_ms']:>12.1f} {row['get_cpu_ms']:>11.1f} {row['get_wall_ms']:>12.1f} "
            f"{row['peak_rss_mib_over_baseline']:>14.1f} {row['baseline_rss_mib']:>13.1f}"
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2:])
    else:
        sys.exit(main())
