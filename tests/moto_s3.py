"""S3 for the tests: moto's server in its own process, with the lake's bucket (`moto_s3`, one
per session)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

UNREACHABLE_S3 = {
    "AWS_ENDPOINT_URL": "http://127.0.0.1:9",
    "AWS_ALLOW_HTTP": "true",
    "AWS_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "test",
    "AWS_SECRET_ACCESS_KEY": "test",
    "max_retries": "0",
}
"""Storage options of an S3 nobody listens on (port 9, discard), tried once: a lake outage."""


class MotoS3:
    """moto's S3 in its own process (the in-process ThreadedMotoServer shares the GIL with
    deltalake calls that hold it, and their requests then time out)."""

    BUCKET = "lake"

    def __init__(self):

        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        script = Path(sys.executable).with_name("moto_server")
        command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
        self.process = subprocess.Popen(
            command + ["-H", "127.0.0.1", "-p", str(self.port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.storage_options = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ALLOW_HTTP": "true",
            "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
        }
        self._wait()
        self.client("s3").create_bucket(Bucket=self.BUCKET)

    def client(self, service: str):
        """A boto3 client of `service` on this server."""
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def _wait(self, timeout: float = 30.0) -> None:
        import socket
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError("moto_server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except Exception:
            self.process.kill()


@pytest.fixture(scope="session")
def moto_s3():
    """One moto S3 server for the test session (import this fixture into a test module)."""
    server = MotoS3()
    yield server
    server.stop()
