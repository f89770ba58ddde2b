"""A child asked to end with its parent: only when the variable names a pid, and the
variable does not reach its own children."""

from __future__ import annotations

import os

from totes_cli.parent_death import PARENT_ENV, end_with_parent, parent_environment


def test_the_parent_names_itself():
    assert parent_environment() == {PARENT_ENV: str(os.getpid())}


def test_without_a_pid_nothing_is_asked_and_the_variable_is_taken_out():
    for value in ("", "not-a-pid", "-1"):
        environ = {PARENT_ENV: value, "PATH": "/bin"}
        assert end_with_parent(environ) is False
        assert environ == {"PATH": "/bin"}
    assert end_with_parent({}) is False
