"""`totes dashboard` at the command line: a port in use is one sentence; the process the demo
starts gets no variable that may hold a secret."""

from __future__ import annotations


from totes_cli.dashboard_cmd import child_environment


def test_the_dashboard_started_by_the_demo_gets_no_secret_in_its_environment(monkeypatch, tmp_path):
    secrets = {
        "TOTES_SOURCE_DSN": "postgresql://totes:s3cret@db/totesys",
        "PGPASSWORD": "s3cret",
        "TOTES_WAREHOUSE_SECRET": "prod/warehouse",
        "AWS_SECRET_ACCESS_KEY": "s3cret",
        "AWS_SESSION_TOKEN": "s3cret",
        "TOTES_SOURCE_PASSWORD_FILE": str(tmp_path / "pw"),
        "TOTES_PERSONAL_DATA_KEY": "s3cret-hash-key",
        "TOTES_PERSONAL_DATA_KEY_FILE": str(tmp_path / "key"),
    }
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    env = child_environment(tmp_path)
    assert not set(secrets) & set(env)
    assert "s3cret" not in " ".join(env.values())
    assert env["TOTES_HOME"] == str(tmp_path) and "PATH" in env
