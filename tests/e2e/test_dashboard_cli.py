"""`totes dashboard` at the command line: a port in use is one sentence; the process the demo
starts gets no variable that may hold a secret."""

from __future__ import annotations

import socket

from tests.cli_helpers import totes


def test_a_port_in_use_is_one_sentence_naming_the_flag(tmp_path):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = totes(
            "dashboard",
            "--port",
            str(port),
            "--lake",
            str(tmp_path / "lake"),
            "--warehouse",
            str(tmp_path / "warehouse.duckdb"),
            home=tmp_path,
            timeout=60,
        )
    assert result.returncode == 2
    assert f"Cannot listen on 127.0.0.1:{port}" in result.stderr and "--port" in result.stderr
    assert "Traceback" not in result.stderr
