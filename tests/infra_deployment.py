"""infra/ deployed on moto's server for the apply test: the override that points every service at
moto, Terraform run in a scratch copy, and what boto3 reads back (inventory, grants, trust)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import boto3
import pytest

from tests.moto_s3 import MotoS3

INFRA = Path(__file__).resolve().parents[1] / "infra"
PLUGIN_DIR = Path(os.environ.get("TOTES_TF_PLUGIN_DIR", "/opt/tf-plugins"))
TERRAFORM = shutil.which("terraform")
REGION = "eu-west-2"
NAME = "totes-cdc"
BUCKET = "totes-cdc-lake-under-test"
EMAIL = "alarms@example.com"


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


@pytest.fixture(name="deployment")
def infra_deployment(tmp_path):
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
