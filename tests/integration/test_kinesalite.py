"""kinesalite as a child process: durable across restarts (even SIGKILL), loopback only, one
server per data directory, and a one-sentence error when it is not installed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from change_events.kinesis import ensure_stream, kinesis_client
from local_stack import Kinesalite, KinesaliteError, KinesaliteNotInstalled, find_kinesalite
from local_stack.kinesalite import BIN_ENV


def _put_and_read(client, stream: str, payloads: list[bytes]) -> list[bytes]:
    for payload in payloads:
        client.put_record(StreamName=stream, PartitionKey="k", Data=payload)
    return _read(client, stream)


def _read(client, stream: str) -> list[bytes]:
    (shard,) = client.list_shards(StreamName=stream)["Shards"]
    iterator = client.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
        "ShardIterator"
    ]
    return [r["Data"] for r in client.get_records(ShardIterator=iterator)["Records"]]


def _is_one_sentence(message: str) -> bool:
    return "\n" not in message and ". " not in message.rstrip(".")


def test_data_survives_a_restart_and_a_kill(tmp_path):
    data_dir = tmp_path / "kinesis"
    server = Kinesalite(data_dir)
    with server:
        client = kinesis_client(endpoint_url=server.endpoint_url)
        assert ensure_stream(client, "orders", 1) is True
        assert _put_and_read(client, "orders", [b"one", b"two"]) == [b"one", b"two"]
    assert not server.is_running()

    with Kinesalite(data_dir) as server:
        client = kinesis_client(endpoint_url=server.endpoint_url)
        assert ensure_stream(client, "orders", 1) is False  # still there, and ACTIVE
        assert _put_and_read(client, "orders", [b"three"]) == [b"one", b"two", b"three"]
        os.kill(server.pid, signal.SIGKILL)
        server._process.wait(timeout=10)

    with Kinesalite(data_dir) as server:
        client = kinesis_client(endpoint_url=server.endpoint_url)
        assert _read(client, "orders") == [b"one", b"two", b"three"]


def test_listens_on_loopback_on_a_free_port_and_stops(tmp_path):
    first, second = Kinesalite(tmp_path / "a"), Kinesalite(tmp_path / "b")
    with first, second:
        assert first.port != second.port
        assert first.endpoint_url == f"http://127.0.0.1:{first.port}"
        pid = first.pid
    assert not first.is_running() and not second.is_running()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(KinesaliteError, match="not running"):
        _ = first.endpoint_url


def test_a_given_port_in_use_is_reported(tmp_path):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        with pytest.raises(KinesaliteError, match="EADDRINUSE"):
            Kinesalite(tmp_path, port=port).start()


def test_one_server_per_data_directory(tmp_path):
    with Kinesalite(tmp_path):
        with pytest.raises(KinesaliteError, match="in use by another kinesalite server") as error:
            Kinesalite(tmp_path).start()
    assert _is_one_sentence(str(error.value))


def test_missing_kinesalite_is_one_sentence(tmp_path, monkeypatch):
    monkeypatch.setenv(BIN_ENV, str(tmp_path / "nowhere" / "kinesalite"))
    with pytest.raises(KinesaliteNotInstalled) as error:
        Kinesalite(tmp_path / "data").start()
    message = str(error.value)
    assert message.startswith("kinesalite is not installed: run `make install`")
    assert BIN_ENV in message and _is_one_sentence(message)

    monkeypatch.delenv(BIN_ENV)
    with pytest.raises(KinesaliteNotInstalled, match="make install") as error:
        find_kinesalite(repo_root=tmp_path)
    assert _is_one_sentence(str(error.value))


def test_missing_node_is_one_sentence(tmp_path, monkeypatch):
    find_kinesalite()  # installed; only Node is missing
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(KinesaliteNotInstalled, match="Node.js") as error:
        Kinesalite(tmp_path / "data").start()
    assert _is_one_sentence(str(error.value)) and "make install" in str(error.value)


def test_a_parent_killed_without_stop_does_not_leave_the_server_behind(tmp_path):
    script = (
        "import sys, time; from local_stack import Kinesalite; k = Kinesalite(sys.argv[1]); "
        "k.start(); print(k.pid, flush=True); time.sleep(120)"
    )
    parent = subprocess.Popen([sys.executable, "-c", script, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            os.kill(server_pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(server_pid, signal.SIGKILL)
        pytest.fail("kinesalite outlived its parent")
    with Kinesalite(tmp_path):  # the directory is free again
        pass
