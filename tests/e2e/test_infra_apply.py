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
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from tests.moto_s3 import MotoS3

INFRA = Path(__file__).resolve().parents[2] / "infra"
PLUGIN_DIR = Path(os.environ.get("TOTES_TF_PLUGIN_DIR", "/opt/tf-plugins"))
TERRAFORM = shutil.which("terraform")
REGION = "eu-west-2"
NAME = "totes-cdc"
BUCKET = "totes-cdc-lake-under-test"
EMAIL = "alarms@example.com"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(TERRAFORM is None, reason="terraform is not on PATH"),
    pytest.mark.skipif(not PLUGIN_DIR.is_dir(), reason=f"no offline provider mirror at {PLUGIN_DIR}"),
]

# Every service infra/ uses, pointed at one moto server.
SERVICES = (
    "cloudwatch",
    "cloudwatchlogs",
    "ec2",
    "ecr",
    "ecs",
    "efs",
    "events",
    "iam",
    "kinesis",
    "lambda",
    "s3",
    "secretsmanager",
    "sns",
    "sqs",
    "sts",
)

# Attributes moto does not store or return, so Terraform would see them change on every
# plan although real AWS keeps them. Only for the test: infra/ keeps comparing them.
MOTO_DOES_NOT_ECHO = {
    # CreateStream's Tags are dropped by moto (ListTagsForStream returns none).
    ("aws_kinesis_stream", "changes"): ["tags_all"],
    # moto's Lambda has no LoggingConfig: GetFunction never returns the log group.
    ("aws_lambda_function", "processor"): ["logging_config"],
    # moto's ECS has no availabilityZoneRebalancing: DescribeServices never returns it.
    ("aws_ecs_service", "reader"): ["availability_zone_rebalancing"],
    ("aws_ecs_service", "sync"): ["availability_zone_rebalancing"],
}


def _override(endpoint: str) -> str:
    endpoints = "\n".join(f'    {service} = "{endpoint}"' for service in SERVICES)
    lifecycles = "\n".join(
        f'resource "{kind}" "{name}" {{\n  lifecycle {{\n    ignore_changes = [{", ".join(attributes)}]\n  }}\n}}\n'
        for (kind, name), attributes in MOTO_DOES_NOT_ECHO.items()
    )
    return f"""# The state stays in the scratch folder, not in infra/'s S3 backend.
terraform {{
  backend "local" {{}}
}}

provider "aws" {{
  region                      = "{REGION}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  s3_use_path_style           = true
  endpoints {{
{endpoints}
  }}
}}

{lifecycles}"""


class Terraform:
    """The terraform CLI in one folder, with an environment that holds no real credentials."""

    def __init__(self, work: Path):
        self.work = work
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work),
            "TF_IN_AUTOMATION": "1",
            "CHECKPOINT_DISABLE": "1",
            "TF_INPUT": "0",
        }

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [TERRAFORM, *args, "-no-color"], cwd=self.work, env=self.env, capture_output=True, text=True, timeout=600
        )
        if check:
            assert result.returncode == 0, f"terraform {args[0]}:\n{result.stdout[-6000:]}{result.stderr}"
        return result


class Aws:
    """boto3 clients on the moto server."""

    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def __getattr__(self, service: str):
        return boto3.client(
            service,
            endpoint_url=self.endpoint,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )


def _network(aws: Aws) -> dict:
    """The network infra/ is given, not what it creates: a VPC, two subnets, a group."""
    vpc = aws.ec2.create_vpc(CidrBlock="10.20.0.0/16")["Vpc"]["VpcId"]
    subnets = [
        aws.ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.20.{i}.0/24", AvailabilityZone=f"{REGION}{zone}")["Subnet"][
            "SubnetId"
        ]
        for i, zone in enumerate("ab")
    ]
    group = aws.ec2.create_security_group(GroupName="tasks", Description="tasks", VpcId=vpc)["GroupId"]
    return {"subnet_ids": subnets, "security_group_ids": [group]}


def _inventory(aws: Aws) -> dict[str, set]:
    """What exists, service by service: the same before the apply and after the destroy."""
    ecs_clusters = aws.ecs.list_clusters()["clusterArns"]
    return {
        "streams": set(aws.kinesis.list_streams()["StreamNames"]),
        "buckets": {b["Name"] for b in aws.s3.list_buckets()["Buckets"]},
        "functions": {f["FunctionName"] for f in aws.__getattr__("lambda").list_functions()["Functions"]},
        "mappings": {m["UUID"] for m in aws.__getattr__("lambda").list_event_source_mappings()["EventSourceMappings"]},
        "clusters": {
            c["clusterName"]
            for c in aws.ecs.describe_clusters(clusters=ecs_clusters)["clusters"]
            if c["status"] == "ACTIVE"
        }
        if ecs_clusters
        else set(),
        "task definitions": set(aws.ecs.list_task_definitions(status="ACTIVE")["taskDefinitionArns"]),
        "alarms": {a["AlarmName"] for a in aws.cloudwatch.describe_alarms()["MetricAlarms"]},
        "dashboards": {d["DashboardName"] for d in aws.cloudwatch.list_dashboards()["DashboardEntries"]},
        "topics": {t["TopicArn"] for t in aws.sns.list_topics()["Topics"]},
        "subscriptions": {s["SubscriptionArn"] for s in aws.sns.list_subscriptions()["Subscriptions"]},
        "queues": set(aws.sqs.list_queues().get("QueueUrls", [])),
        "roles": {r["RoleName"] for r in aws.iam.list_roles()["Roles"]},
        "secrets": {s["Name"] for s in aws.secretsmanager.list_secrets(IncludePlannedDeletion=True)["SecretList"]},
        "repositories": {r["repositoryName"] for r in aws.ecr.describe_repositories()["repositories"]},
        "file systems": {f["FileSystemId"] for f in aws.efs.describe_file_systems()["FileSystems"]},
        "log groups": {g["logGroupName"] for g in aws.logs.describe_log_groups()["logGroups"]},
        "rules": {r["Name"] for r in aws.events.list_rules()["Rules"]},
        "security groups": {g["GroupId"] for g in aws.ec2.describe_security_groups()["SecurityGroups"]},
    }


@pytest.fixture
def deployment(tmp_path):
    """infra/ applied to a fresh moto server; destroyed (and checked empty) afterwards."""
    moto = MotoS3()
    try:
        aws = Aws(moto.endpoint)
        work = tmp_path / "infra"
        shutil.copytree(
            INFRA,
            work,
            ignore=shutil.ignore_patterns(".terraform", "*.tfstate*", "*.tfvars", "override.tf", "*_override.tf"),
        )
        (work / "override.tf").write_text(_override(moto.endpoint), encoding="utf-8")
        (work / "terraform.tfvars.json").write_text(
            json.dumps(
                {
                    "aws_region": REGION,
                    "image_tag": "test",
                    "lake_bucket_name": BUCKET,
                    "alarm_email": EMAIL,
                    "source_db_instance_id": "totesys-source",  # adds the RDS slot-lag alarm: every alarm exists
                    "secret_recovery_window_days": 0,  # destroy deletes the secrets at once
                    **_network(aws),
                }
            ),
            encoding="utf-8",
        )
        terraform = Terraform(work)
        init = terraform("init", f"-plugin-dir={PLUGIN_DIR}", "-lockfile=readonly")
        assert "Terraform has been successfully initialized" in init.stdout
        before = _inventory(aws)
        terraform("apply", "-auto-approve", "-parallelism=30")
        yield terraform, aws, before
        terraform("destroy", "-auto-approve", "-refresh=false", "-parallelism=30")
        after = _inventory(aws)
        left = {kind: after[kind] - before[kind] for kind in after if after[kind] - before[kind]}
        assert not left, f"destroy left {left}"
    finally:
        moto.stop()


def _state_resources(terraform: Terraform, kind: str) -> list[dict]:
    state = json.loads(terraform("show", "-json").stdout)
    return [r for r in state["values"]["root_module"]["resources"] if r["type"] == kind]


def _statements(document: str | dict) -> list[dict]:
    document = json.loads(document) if isinstance(document, str) else document
    statements = document["Statement"]
    statements = statements if isinstance(statements, list) else [statements]
    for statement in statements:
        for key in ("Action", "Resource"):
            value = statement.get(key, [])
            statement[key] = [value] if isinstance(value, str) else value
    return statements


def _grants(aws: Aws, role: str) -> dict[str, set[str]]:
    """action -> resources the role's inline policies allow."""
    grants: dict[str, set[str]] = {}
    for policy in aws.iam.list_role_policies(RoleName=role)["PolicyNames"]:
        document = aws.iam.get_role_policy(RoleName=role, PolicyName=policy)["PolicyDocument"]
        for statement in _statements(document):
            assert statement["Effect"] == "Allow", f"{role}: {statement}"
            for action in statement["Action"]:
                assert "*" not in action, f"{role}: wildcard action {action}"
                grants.setdefault(action, set()).update(statement["Resource"])
    assert not aws.iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"], f"{role}: managed policy"
    return grants


def _trusted(aws: Aws, role: str) -> set[str]:
    document = aws.iam.get_role(RoleName=role)["Role"]["AssumeRolePolicyDocument"]
    document = json.loads(document) if isinstance(document, str) else document
    return {
        principal
        for statement in _statements(document)
        for principal in (
            [statement["Principal"]["Service"]]
            if isinstance(statement["Principal"]["Service"], str)
            else statement["Principal"]["Service"]
        )
    }


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
