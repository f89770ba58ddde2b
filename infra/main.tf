# totes-cdc on AWS: the same code as locally, configured by environment.
#
#   reader (ECS Fargate) ──► Kinesis ──► processor (Lambda, container image) ──► lake (S3)
#                                                                                  │
#                                                      sync (ECS Fargate) ◄────────┘──► warehouse
#
# One file per concern: stream.tf, lake.tf, image.tf, processor.tf, reader.tf, sync.tf,
# secrets.tf, iam.tf, alarms.tf. Variables in variables.tf, outputs in outputs.tf.

terraform {
  # 1.10 brought S3-native state locking (use_lockfile).
  required_version = ">= 1.10"

  # State in S3, locked by a lock file next to it (no DynamoDB table). Its settings come
  # from `terraform init -backend-config=backend.hcl -backend-config=bucket=…` (see
  # README.md), so a plain `init -backend=false` (the tests, validate) needs none.
  backend "s3" {}

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

provider "aws" {
  region = var.aws_region

  default_tags {
    tags = merge({ project = "totes-cdc" }, var.tags)
  }
}

data "aws_caller_identity" "current" {}

data "aws_subnet" "first" {
  id = var.subnet_ids[0]
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  vpc_id     = data.aws_subnet.first.vpc_id

  # The lake as the code names it (TOTES_LAKE): s3://bucket/prefix.
  lake_prefix = trim(var.lake_prefix, "/")
  lake_uri    = "s3://${aws_s3_bucket.lake.bucket}/${local.lake_prefix}"

  image_uri = "${aws_ecr_repository.app.repository_url}:${var.image_tag}"

  # Where the code's own CloudWatch metrics land (embedded metric format, written by
  # aws-lambda-powertools: Metrics(namespace="totes-cdc", service=...)). The dimension is
  # "service"; its values are the stages' service names. tests/test_infra.py checks these
  # against what the code emits.
  emf_namespace     = "totes-cdc"
  reader_service    = "reader"
  processor_service = "processor"
  sync_service      = "sync"
  verify_service    = "verify"
}
