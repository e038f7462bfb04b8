"""A real S3-compatible server for the storage tests: moto's standalone server (from PyPI),
started as its own process on a free loopback port, one bucket per test."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from ..support import free_port


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                httpx.get(url + "/moto-api/", timeout=0.5)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    pytest.fail("moto's server did not start")
                time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(5)


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh bucket; the AWS_* variables the broker (obstore) reads point at moto."""
    bucket = "ckb-" + secrets.token_hex(6)
    httpx.put(f"{s3_endpoint}/{bucket}").raise_for_status()
    for name, value in {
        "AWS_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    assert os.environ["AWS_ENDPOINT_URL"] == s3_endpoint
    return bucket
