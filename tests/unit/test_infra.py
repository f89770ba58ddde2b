"""infra/: the Terraform is formatted and valid, its alarms watch metrics the code really
emits, and its IAM policies stay least-privilege.

The Terraform tests need the `terraform` binary (and, for validate, an offline provider
mirror: TOTES_TF_PLUGIN_DIR, default /opt/tf-plugins) and skip cleanly without them. The
others read the .tf text and run the code that emits the metrics, so they need neither.
"""

from __future__ import annotations

import re

from tests.terraform_alarms import WORKFLOWS, _alarms, _blocks, _body, _emitted_metrics, _tf_text


def test_deployments_take_credentials_from_oidc_only():
    """No long-lived AWS keys in any workflow; the jobs that reach AWS assume a role through
    GitHub's OIDC token, and the deploy runs in the protected production environment."""
    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted(WORKFLOWS.glob("*.yml")))
    assert not re.search(r"aws-access-key-id|aws-secret-access-key|AWS_SECRET_ACCESS_KEY", text)
    assert text.count("role-to-assume:") >= 2 and "id-token: write" in text
    assert re.search(r"(?m)^\s+environment:\s*production\s*$", text)


# -- reading the .tf text ----------------------------------------------------------------------


def _nested(body: str, name: str) -> list[str]:
    return [_body(body, m.end() - 1) for m in re.finditer(rf"(?m)^\s*{name}\s*\{{", body)]


# -- what the code emits -------------------------------------------------------------------------


def test_alarms_watch_metrics_the_code_emits():
    emitted = _emitted_metrics()
    namespaces = {namespace for namespace, _, _ in emitted}
    assert namespaces, "the code emitted no EMF metrics"
    own = {name: a for name, a in _alarms().items() if not (a["namespace"] or "").startswith("AWS/")}
    assert own, "no alarm on the project's own metrics"
    for name, alarm in own.items():
        key = (alarm["namespace"], frozenset(alarm["dimensions"].items()), alarm["metric"])
        assert key in emitted, f"alarm {name} watches {key}, which the code never emits; it emits:\n" + "\n".join(
            sorted(map(str, emitted))
        )


def test_alarms_cover_the_guarantees():
    from stream_processors.handler import NAMESPACE as own

    alarms = _alarms()
    watched = {(a["namespace"], a["metric"]) for a in alarms.values()}
    assert ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds") in watched  # processor behind
    assert ("AWS/Lambda", "Errors") in watched
    assert (own, "DeadLetters") in watched  # guarantee 8
    assert (own, "BatchRetries") in watched  # a batch retried, not lost
    assert (own, "UnconfirmedWalBytes") in watched  # guarantee 7
    assert (own, "SlotLost") in watched  # guarantee 1: a lost slot
    silent = [a for a in alarms.values() if a["namespace"] == own and a["metric"] == "EventsPerSecond"]
    assert silent and silent[0]["missing"] == "breaching", "a silent reader must raise an alarm"
    silent_sync = [a for a in alarms.values() if a["namespace"] == own and a["metric"] == "SyncRuns"]
    assert silent_sync and silent_sync[0]["missing"] == "breaching", "a silent sync must raise an alarm"


def test_reader_and_sync_tasks_emit_their_metrics():
    """The reader and the sync write EMF only with --emf: without it their alarms watch nothing."""
    tasks = _blocks(_tf_text(), r'resource\s+"aws_ecs_task_definition"')
    for stage in ("reader", "sync"):
        assert re.search(rf'command\s*=\s*\[\s*"totes"\s*,\s*"{stage}"[^\]]*"--emf"', tasks[stage]), stage


# -- IAM and secrets ---------------------------------------------------------------------------------

ACTIONS_WITHOUT_RESOURCES = {"ecr:GetAuthorizationToken"}


def _statements():
    text = _tf_text()
    for name, body in _blocks(text, r'data\s+"aws_iam_policy_document"').items():
        for statement in _nested(body, "statement"):
            effect = re.search(r'(?m)^\s*effect\s*=\s*"(\w+)"', statement)
            actions = re.search(r"(?ms)^\s*actions\s*=\s*\[(.*?)\]", statement)
            resources = re.search(r"(?ms)^\s*resources\s*=\s*\[(.*?)\]", statement)
            yield (
                name,
                effect.group(1) if effect else "Allow",
                re.findall(r'"([^"]*)"', actions.group(1)) if actions else [],
                re.findall(r'"([^"]*)"', resources.group(1)) if resources else [],
            )


def test_iam_statements_have_no_wildcard_actions():
    statements = list(_statements())
    assert len(statements) >= 10, "the IAM policy documents were not found"
    for name, effect, actions, resources in statements:
        assert actions, f"{name}: a statement without actions"
        assert "*" not in actions, f"{name}: a '*' action"
        if effect == "Allow":
            wild = [a for a in actions if "*" in a]
            assert not wild, f"{name}: wildcard actions {wild}"
            if "*" in resources:
                assert set(actions) <= ACTIONS_WITHOUT_RESOURCES, f"{name}: '*' resource for {actions}"


def test_every_policy_goes_through_a_checked_document():
    """Policies written as raw JSON would escape the check above."""
    assert not re.search(r'"?\bAction"?\s*[=:]', _tf_text())


def test_secrets_have_no_values_in_terraform():
    text = _tf_text()
    assert "aws_secretsmanager_secret_version" not in text, "secret values are set out of band"
    for name, body in _blocks(text, "variable").items():
        if re.search(r"dsn|password|secret", name, re.I) and "recovery" not in name:
            assert not re.search(r"(?m)^\s*default\s*=", body), f"variable {name} has a default"
    for name, body in _blocks(text, "output").items():
        assert "secret_string" not in body, f"output {name} exposes a secret"


def _reader_statements() -> dict[str, str]:
    body = _blocks(_tf_text(), r'data\s+"aws_iam_policy_document"')["reader"]
    return {re.search(r'sid\s*=\s*"(\w+)"', s).group(1): s for s in _nested(body, "statement")}


def test_the_reader_reads_the_lake_watermark_and_writes_only_the_snapshot_tables():
    """The reader confirms the slot up to the lake watermark: its task is given the lake and
    may read the _progress objects (no write there); its initial snapshot goes straight into
    the change logs, state tables and dead letters, which it may read and write, never delete."""
    task = _blocks(_tf_text(), r'resource\s+"aws_ecs_task_definition"')["reader"]
    assert re.search(r'name\s*=\s*"TOTES_LAKE"\s*,\s*value\s*=\s*local\.lake_uri', task)
    local_text = _tf_text()
    assert 'lake_progress_objects = "${aws_s3_bucket.lake.arn}/${local.lake_prefix}/_progress/*"' in local_text
    lake_statements = {sid: s for sid, s in _reader_statements().items() if "s3:" in s}
    assert set(lake_statements) == {"ListLakeProgress", "ReadLakeProgress", "ListLakeTables", "WriteLakeTables"}
    assert (
        'lake_table_prefixes = [for kind in ["changes", "tables", "_dead_letters"] : "${local.lake_prefix}/${kind}/"]'
    ) in local_text
    write = lake_statements["WriteLakeTables"]
    assert re.findall(r'"(s3:\w+)"', write) == ["s3:GetObject", "s3:PutObject"]
    assert re.search(r"resources\s*=\s*local\.lake_table_objects\s*$", write, re.M)
    tables_listing = lake_statements["ListLakeTables"]
    assert re.findall(r'"(s3:\w+)"', tables_listing) == ["s3:ListBucket", "s3:prefix"]
    assert "for prefix in local.lake_table_prefixes" in tables_listing
    read = lake_statements["ReadLakeProgress"]
    assert re.findall(r'"(s3:\w+)"', read) == ["s3:GetObject"]
    assert re.search(r"resources\s*=\s*\[\s*local\.lake_progress_objects\s*\]", read)
    listing = lake_statements["ListLakeProgress"]
    assert re.findall(r'"(s3:\w+)"', listing) == ["s3:ListBucket", "s3:prefix"]
    assert 'values   = ["${local.lake_progress_prefix}*"]' in listing


# -- the lake bucket: versioned, recoverable, deleted from by maintenance only -----------------


def _matches(pattern: str, action: str) -> bool:
    return re.fullmatch(re.escape(pattern).replace(r"\*", ".*"), action, re.I) is not None


DELETES = ("s3:DeleteObject", "s3:DeleteObjectVersion")


def test_lake_bucket_is_versioned_and_only_noncurrent_versions_expire():
    text = _tf_text()
    versioning = _blocks(text, r'resource\s+"aws_s3_bucket_versioning"')
    assert any(
        re.search(r"bucket\s*=\s*aws_s3_bucket\.lake\.id", body) and re.search(r'status\s*=\s*"Enabled"', body)
        for body in versioning.values()
    ), versioning
    lifecycle = _blocks(text, r'resource\s+"aws_s3_bucket_lifecycle_configuration"')["lake"]
    rules = _nested(lifecycle, "rule")
    noncurrent = [body for rule in rules for body in _nested(rule, "noncurrent_version_expiration")]
    assert noncurrent and all(re.search(r"noncurrent_days\s*=\s*\S+", body) for body in noncurrent)
    assert any(_nested(rule, "abort_incomplete_multipart_upload") for rule in rules)
    for rule in rules:  # a current Delta file expiring would corrupt its table
        for expiration in _nested(rule, "expiration"):
            assert not re.search(r"(?m)^\s*(days|date)\s*=", expiration), expiration


def test_only_the_maintenance_role_may_delete_lake_objects():
    statements = list(_statements())
    allowing = {
        name
        for name, effect, actions, _ in statements
        if effect == "Allow" and any(_matches(a, d) for a in actions for d in DELETES)
    }
    assert allowing == {"maintain"}, f"documents that allow deleting: {allowing}"
    text = _tf_text()
    attached = {
        m.group(1): m.group(2)
        for m in re.finditer(
            r"(?ms)role\s*=\s*aws_iam_role\.(\w+)\.id\s*policy\s*=\s*data\.aws_iam_policy_document\.(\w+)\.json", text
        )
    }
    assert [role for role, document in attached.items() if document == "maintain"] == ["maintain"], attached
    assert not re.search(r"source_policy_documents\s*=\s*\[[^\]]*aws_iam_policy_document\.maintain\.json", text)
    # The bucket policy denies every delete to every principal but that role.
    bucket = _blocks(text, r'data\s+"aws_iam_policy_document"')["lake_bucket"]
    denies = [
        s
        for s in _nested(bucket, "statement")
        if re.search(r'effect\s*=\s*"Deny"', s)
        and all(any(_matches(a, d) for a in re.findall(r'"(s3:[^"]+)"', s)) for d in DELETES)
        and "aws:PrincipalArn" in s
    ]
    assert len(denies) == 1, "no Deny of s3:DeleteObject* but to the maintenance role in the lake's bucket policy"
    deny = denies[0]
    assert re.search(r'identifiers\s*=\s*\[\s*"\*"\s*\]', deny)
    condition = _nested(deny, "condition")
    assert len(condition) == 1 and re.search(r'test\s*=\s*"ArnNotEquals"', condition[0])
    assert re.search(r'variable\s*=\s*"aws:PrincipalArn"', condition[0])
    assert re.search(r"values\s*=\s*\[\s*aws_iam_role\.maintain\.arn\s*\]", condition[0])


def _task_container(text: str, resource: str) -> str:
    return _blocks(text, r'resource\s+"aws_ecs_task_definition"')[resource]


def test_tasks_fetch_their_dsn_from_secrets_manager_by_the_names_the_cli_reads():
    """No DSN is put into a task's environment (where any child process would inherit it):
    each task gets only its secret's ARN, under the setting the CLI reads it from, and its
    own role may read that secret and no other."""
    from totes_cli.settings import Settings

    text = _tf_text()
    settings = {f"TOTES_{name.upper()}" for name in Settings.model_fields}
    documents = _blocks(text, r'data\s+"aws_iam_policy_document"')
    for task, variable, secret in (
        ("reader", "TOTES_SOURCE_DSN_SECRET", "source_dsn"),
        ("sync", "TOTES_WAREHOUSE_SECRET", "warehouse_dsn"),
    ):
        body = _task_container(text, task)
        assert variable in settings, f"the CLI does not read {variable}"
        assert re.search(rf'name\s*=\s*"{variable}",\s*value\s*=\s*aws_secretsmanager_secret\.{secret}\.arn', body), (
            f"the {task} task does not get {variable}"
        )
        assert "valueFrom" not in body, f"the {task} task has a secret injected into its environment"
        readers = {
            name
            for name, document in documents.items()
            for statement in _nested(document, "statement")
            if "secretsmanager:GetSecretValue" in statement and f"aws_secretsmanager_secret.{secret}.arn" in statement
        }
        assert readers == {task}, f"{secret} is readable by {readers}, not just the {task} task"
