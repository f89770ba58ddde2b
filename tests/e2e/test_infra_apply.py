"""infra/ applied for real, against moto's server: `terraform apply` builds what the
README says (read back with boto3), a second `plan` right after it wants no change, and
`destroy` leaves nothing behind.

infra/ itself points at real AWS. The test copies it to a scratch folder and adds an
override (override.tf) that keeps the state local, points every service at moto and, for the few
attributes moto does not echo back, tells Terraform not to compare them (each one says why
below). `terraform init` installs the provider from the offline mirror (TOTES_TF_PLUGIN_DIR,
default /opt/tf-plugins) and checks it against the committed infra/.terraform.lock.hcl; the
test skips where Terraform or the mirror is absent.
"""

from __future__ import annotations

import json

import pytest

from tests.infra_deployment import (
    PLUGIN_DIR,
    TERRAFORM,
    REGION,
    NAME,
    BUCKET,
    EMAIL,
    _state_resources,
    _statements,
    _grants,
    _trusted,
)
from tests.infra_deployment import infra_deployment  # noqa: F401  (the `deployment` fixture)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH"),
    pytest.mark.skipif(not PLUGIN_DIR.is_dir(), reason=f"no offline provider mirror at {PLUGIN_DIR}"),
]


def test_infra_applies_to_emulated_aws_plans_no_change_and_destroys_clean(deployment):
    terraform, aws, _ = deployment
    account = aws.sts.get_caller_identity()["Account"]
    outputs = {k: v["value"] for k, v in json.loads(terraform("output", "-json").stdout).items()}

    # -- the stream: shards, encryption, retention
    stream = aws.kinesis.describe_stream_summary(StreamName=NAME)["StreamDescriptionSummary"]
    assert stream["OpenShardCount"] == 2
    assert (stream["EncryptionType"], stream["KeyId"]) == ("KMS", "alias/aws/kinesis")
    assert stream["RetentionPeriodHours"] == 24
    assert stream["StreamModeDetails"]["StreamMode"] == "PROVISIONED"
    stream_arn = stream["StreamARN"]

    # -- the bucket: no public access, TLS only, versioned, only noncurrent versions expire
    s3 = aws.s3
    assert all(s3.get_public_access_block(Bucket=BUCKET)["PublicAccessBlockConfiguration"].values())
    assert s3.get_bucket_versioning(Bucket=BUCKET)["Status"] == "Enabled"
    encryption = s3.get_bucket_encryption(Bucket=BUCKET)["ServerSideEncryptionConfiguration"]["Rules"]
    assert encryption[0]["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    policy = {s["Sid"]: s for s in _statements(s3.get_bucket_policy(Bucket=BUCKET)["Policy"])}
    tls = policy["DenyInsecureTransport"]
    assert (tls["Effect"], tls["Action"], tls["Principal"]) == ("Deny", ["s3:*"], "*")
    assert tls["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert set(tls["Resource"]) == {f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/*"}
    deletes = policy["OnlyMaintenanceDeletes"]
    assert deletes["Effect"] == "Deny" and deletes["Action"] == ["s3:DeleteObject*"]
    assert deletes["Condition"] == {
        "ArnNotEquals": {"aws:PrincipalArn": f"arn:aws:iam::{account}:role/{NAME}-maintain"}
    }
    rules = {r["ID"]: r for r in s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert all(r["Status"] == "Enabled" for r in rules.values())
    assert rules["expire-noncurrent-versions"]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 7
    assert rules["abort-incomplete-multipart-uploads"]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    assert not [r for r in rules.values() if {"Days", "Date"} & set(r.get("Expiration", {}))], rules

    # -- the processor Lambda and its event source mapping
    lam = aws.__getattr__("lambda")
    function = lam.get_function(FunctionName=f"{NAME}-processor")
    config = function["Configuration"]
    repository = aws.ecr.describe_repositories(repositoryNames=[NAME])["repositories"][0]
    assert repository["imageTagMutability"] == "IMMUTABLE"
    assert repository["imageScanningConfiguration"]["scanOnPush"] is True
    assert config["PackageType"] == "Image"
    assert function["Code"]["ImageUri"] == f"{repository['repositoryUri']}:test"
    assert (config["MemorySize"], config["Timeout"]) == (2048, 300)
    assert config["Environment"]["Variables"] == {"TOTES_LAKE": f"s3://{BUCKET}/lake", "TOTES_HOME": "/tmp/totes"}
    assert config["Role"] == f"arn:aws:iam::{account}:role/{NAME}-processor"
    queue_arn = aws.sqs.get_queue_attributes(
        QueueUrl=outputs["processor_failure_queue_url"], AttributeNames=["QueueArn"]
    )["Attributes"]["QueueArn"]
    (mapping,) = [
        m for m in lam.list_event_source_mappings()["EventSourceMappings"] if m["EventSourceArn"] == stream_arn
    ]
    assert mapping["FunctionArn"] == config["FunctionArn"]
    assert mapping["StartingPosition"] == "TRIM_HORIZON"
    assert mapping["FunctionResponseTypes"] == ["ReportBatchItemFailures"]  # partial batch responses
    assert mapping["BisectBatchOnFunctionError"] is True
    assert mapping["ParallelizationFactor"] == 1  # one batch per shard at a time
    assert mapping["DestinationConfig"]["OnFailure"]["Destination"] == queue_arn
    assert mapping["MaximumRetryAttempts"] == -1
    assert (mapping["BatchSize"], mapping["MaximumBatchingWindowInSeconds"]) == (100, 1)

    # -- the ECS services: one task each, never two readers at once
    services = aws.ecs.describe_services(cluster=NAME, services=["reader", "sync"])["services"]
    assert {s["serviceName"] for s in services} == {"reader", "sync"}
    # moto's ECS keeps no deployment configuration: what Terraform applied is read from its state.
    applied = {r["values"]["name"]: r["values"] for r in _state_resources(terraform, "aws_ecs_service")}
    for service in services:
        assert service["desiredCount"] == 1, service["serviceName"]
        assert service["launchType"] == "FARGATE"
        state = applied[service["serviceName"]]
        assert (state["deployment_minimum_healthy_percent"], state["deployment_maximum_percent"]) == (0, 100)
        task = aws.ecs.describe_task_definition(taskDefinition=service["taskDefinition"])["taskDefinition"]
        (container,) = task["containerDefinitions"]
        assert container["command"][:3] == ["totes", service["serviceName"], "--emf"]
        assert not container.get("secrets"), "a secret injected into a task's environment"
        assert task["taskRoleArn"] == f"arn:aws:iam::{account}:role/{NAME}-{service['serviceName']}"

    # -- every alarm: what it watches, and that it mails the topic
    topic = outputs["alarm_topic_arn"]
    (subscription,) = aws.sns.list_subscriptions_by_topic(TopicArn=topic)["Subscriptions"]
    assert (subscription["Protocol"], subscription["Endpoint"]) == ("email", EMAIL)
    alarms = {a["AlarmName"].removeprefix(f"{NAME}-"): a for a in aws.cloudwatch.describe_alarms()["MetricAlarms"]}
    function_name = config["FunctionName"]
    queue_name = outputs["processor_failure_queue_url"].rsplit("/", 1)[1]
    expected = {  # name: (namespace, metric, dimensions, statistic, threshold)
        "processor-behind-stream": (
            "AWS/Kinesis",
            "GetRecords.IteratorAgeMilliseconds",
            {"StreamName": NAME},
            "Maximum",
            60000,
        ),
        "processor-errors": ("AWS/Lambda", "Errors", {"FunctionName": function_name}, "Sum", 0),
        "dead-letters": ("totes-cdc", "DeadLetters", {"service": "processor"}, "Sum", 0),
        "processor-retrying": ("totes-cdc", "BatchRetries", {"service": "processor"}, "Sum", 0),
        "processor-gave-up": ("AWS/SQS", "ApproximateNumberOfMessagesVisible", {"QueueName": queue_name}, "Maximum", 0),
        "processor-silent": ("totes-cdc", "Events", {"service": "processor"}, "SampleCount", 1),
        "reader-unconfirmed-wal": ("totes-cdc", "UnconfirmedWalBytes", {"service": "reader"}, "Maximum", 1073741824),
        "reader-slot-lost": ("totes-cdc", "SlotLost", {"service": "reader"}, "Maximum", 1),
        "reader-silent": ("totes-cdc", "EventsPerSecond", {"service": "reader"}, "SampleCount", 1),
        "sync-silent": ("totes-cdc", "SyncRuns", {"service": "sync"}, "SampleCount", 1),
        "source-slot-lag": (
            "AWS/RDS",
            "OldestReplicationSlotLag",
            {"DBInstanceIdentifier": "totesys-source"},
            "Maximum",
            5368709120,
        ),
    }
    missing = set(expected) - set(alarms)
    assert not missing, f"alarms not created: {missing}"
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [topic] and alarm["OKActions"] == [topic], name
        if name in expected:
            watched = (
                alarm["Namespace"],
                alarm["MetricName"],
                {d["Name"]: d["Value"] for d in alarm["Dimensions"]},
                alarm["Statistic"],
                alarm["Threshold"],
            )
            assert watched == expected[name], name
    for silent in ("processor-silent", "reader-silent", "sync-silent", "source-slot-lag"):
        assert alarms[silent]["TreatMissingData"] == "breaching", silent

    # -- IAM: no wildcard action, each role only its job
    bucket, objects = f"arn:aws:s3:::{BUCKET}", f"arn:aws:s3:::{BUCKET}/lake/*"
    source_secret, warehouse_secret = outputs["source_dsn_secret_arn"], outputs["warehouse_dsn_secret_arn"]
    key_secret = outputs["personal_data_key_secret_arn"]  # the reader hashes personal data with it
    efs = aws.efs.describe_file_systems()["FileSystems"][0]["FileSystemArn"]
    log_group = f"arn:aws:logs:{REGION}:{account}:log-group:"
    roles = {  # role: ({trusted service}, {action: {resources}})
        "reader": (
            "ecs-tasks.amazonaws.com",
            {
                "kinesis:PutRecords": {stream_arn},
                "kinesis:ListShards": {stream_arn},
                "kinesis:DescribeStreamSummary": {stream_arn},
                # the lake's progress to read; its change logs, state tables and dead letters to write
                # the snapshot into (never a delete)
                "s3:ListBucket": {bucket},
                "s3:GetObject": {
                    f"{bucket}/lake/{prefix}/*" for prefix in ("_progress", "changes", "tables", "_dead_letters")
                },
                "s3:PutObject": {f"{bucket}/lake/{prefix}/*" for prefix in ("changes", "tables", "_dead_letters")},
                "secretsmanager:GetSecretValue": {source_secret, key_secret},
                "elasticfilesystem:ClientMount": {efs},
                "elasticfilesystem:ClientWrite": {efs},
            },
        ),
        "processor": (
            "lambda.amazonaws.com",
            {
                **{
                    f"kinesis:{a}": {stream_arn}
                    for a in ("GetRecords", "GetShardIterator", "DescribeStream", "DescribeStreamSummary", "ListShards")
                },
                "s3:ListBucket": {bucket},
                "s3:GetObject": {objects},
                "s3:PutObject": {objects},
                "sqs:SendMessage": {queue_arn},
                "logs:CreateLogStream": {f"{log_group}/aws/lambda/{NAME}-processor:*"},
                "logs:PutLogEvents": {f"{log_group}/aws/lambda/{NAME}-processor:*"},
            },
        ),
        "sync": (
            "ecs-tasks.amazonaws.com",
            {
                "s3:ListBucket": {bucket},
                "s3:GetObject": {objects},
                "kinesis:ListShards": {stream_arn},
                "secretsmanager:GetSecretValue": {warehouse_secret},
            },
        ),
        "maintain": (
            "ecs-tasks.amazonaws.com",
            {
                "s3:ListBucket": {bucket},
                "s3:GetObject": {objects},
                "s3:PutObject": {objects},
                "s3:DeleteObject": {objects},
            },
        ),
        "task-execution": (
            "ecs-tasks.amazonaws.com",
            {
                "ecr:GetAuthorizationToken": {"*"},
                **{
                    f"ecr:{a}": {repository["repositoryArn"]}
                    for a in ("BatchCheckLayerAvailability", "BatchGetImage", "GetDownloadUrlForLayer")
                },
                **{
                    f"logs:{a}": {f"{log_group}/ecs/{NAME}/{stage}:*" for stage in ("reader", "sync", "maintain")}
                    for a in ("CreateLogStream", "PutLogEvents")
                },
            },
        ),
        "maintain-schedule": (
            "events.amazonaws.com",
            {
                "ecs:RunTask": {
                    aws.ecs.describe_task_definition(taskDefinition=f"{NAME}-maintain")["taskDefinition"][
                        "taskDefinitionArn"
                    ]
                },
                "iam:PassRole": {
                    f"arn:aws:iam::{account}:role/{NAME}-maintain",
                    f"arn:aws:iam::{account}:role/{NAME}-task-execution",
                },
            },
        ),
    }
    created = {
        r["RoleName"].removeprefix(f"{NAME}-")
        for r in aws.iam.list_roles()["Roles"]
        if r["RoleName"].startswith(f"{NAME}-")
    }
    assert created == set(roles), created
    for role, (service, grants) in roles.items():
        assert _trusted(aws, f"{NAME}-{role}") == {service}, role
        assert _grants(aws, f"{NAME}-{role}") == grants, role

    # -- a second plan right after the apply wants no change
    plan = terraform("plan", "-detailed-exitcode", "-parallelism=30", check=False)
    assert plan.returncode == 0, f"the plan after apply is not empty:\n{plan.stdout[-8000:]}{plan.stderr}"
