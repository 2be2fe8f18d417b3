"""An S3-compatible server on loopback for the tests: moto's server mode, the local stand-in
for S3 (AWS S3, MinIO and Ceph RGW speak the same protocol), on a free port on 127.0.0.1.

Shared by every test module that needs a bucket (tests/conftest.py's `s3_endpoint` fixture),
so that there is one way to start it and one set of throwaway credentials."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Iterator

import boto3
from moto.server import ThreadedMotoServer

SECRET = "test-secret-never-logged-7f3a"  # if this shows up in any output, a credential leaked


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


@contextlib.contextmanager
def aws_credentials() -> Iterator[None]:
    """Credentials for moto (it accepts any) in the environment; servers started meanwhile
    inherit them. The environment is restored afterwards."""
    saved = dict(os.environ)
    os.environ.update({"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": SECRET,
                       "AWS_DEFAULT_REGION": "us-east-1"})
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def start_moto() -> tuple[ThreadedMotoServer, str]:
    """A started moto server and its endpoint URL (stop it with `.stop()`)."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # moto logs every request
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port(), verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    return server, f"http://{host}:{port}"


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """The endpoint URL of a moto server running for the duration of the block."""
    server, endpoint = start_moto()
    try:
        yield endpoint
    finally:
        server.stop()


def new_bucket(endpoint: str) -> str:
    """A new, empty bucket with a unique name."""
    name = f"snapshots-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)
    return name
