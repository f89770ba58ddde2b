# Applied once per AWS account, by hand, with an administrator's credentials: what CI needs
# before it can deploy infra/ itself.
#
#   - the S3 bucket that holds infra/'s state (versioned, encrypted, TLS only; Terraform
#     locks it with a lock file beside the state, so no DynamoDB table),
#   - GitHub's OIDC identity provider (one per account: create_oidc_provider = false if the
#     account has it already),
#   - a plan role that pull requests of this repository may assume (read only, and not the
#     lake's data, the secrets' values or the stream's records),
#   - a deploy role that only the repository's `production` environment may assume.
#
# Its own state stays local (or wherever the administrator keeps it): it is a handful of
# resources that change about never.

terraform {
  required_version = ">= 1.10"

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
    tags = { project = "totes-cdc" }
  }
}

variable "aws_region" {
  description = "Region of the state bucket and of the deployment."
  type        = string
  default     = "eu-west-2"
}

variable "name" {
  description = "The deployment's name (infra/'s var.name): the deploy role may manage only resources named after it."
  type        = string
  default     = "totes-cdc"
}

variable "github_repository" {
  description = "owner/name of the GitHub repository whose workflows may assume the roles."
  type        = string
}

variable "state_bucket_name" {
  description = "Name of the bucket for infra/'s Terraform state (globally unique)."
  type        = string
}

variable "lake_bucket_name" {
  description = "infra/'s lake_bucket_name: the plan role is denied its objects."
  type        = string
}

variable "create_oidc_provider" {
  description = "Create GitHub's OIDC provider (false where the account has one already)."
  type        = bool
  default     = true
}

data "aws_caller_identity" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  github     = "token.actions.githubusercontent.com"
  oidc_arn   = "arn:aws:iam::${local.account_id}:oidc-provider/${local.github}"
  lake       = "arn:aws:s3:::${var.lake_bucket_name}"
}

# -- state bucket -------------------------------------------------------------------------------

resource "aws_s3_bucket" "state" {
  # checkov:skip=CKV_AWS_18: access to the state is by the two roles below only; CloudTrail is its audit trail
  # checkov:skip=CKV_AWS_144: versioned; the state can be re-imported, replication would double a tiny cost for nothing
  # checkov:skip=CKV2_AWS_62: nothing consumes the state bucket's object events
  # checkov:skip=CKV_AWS_145: SSE-S3 (AES256): the roles need no KMS grants
  bucket = var.state_bucket_name
}

resource "aws_s3_bucket_versioning" "state" {
  bucket = aws_s3_bucket.state.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_public_access_block" "state" {
  bucket                  = aws_s3_bucket.state.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "state" {
  bucket = aws_s3_bucket.state.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "state" {
  bucket     = aws_s3_bucket.state.id
  depends_on = [aws_s3_bucket_versioning.state]

  rule {
    id     = "expire-old-state-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = 90
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

data "aws_iam_policy_document" "state_bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"] # a Deny: covering every S3 action is the point
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "state" {
  bucket     = aws_s3_bucket.state.id
  policy     = data.aws_iam_policy_document.state_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.state]
}

# -- GitHub's OIDC provider and the two roles ------------------------------------------------

resource "aws_iam_openid_connect_provider" "github" {
  count          = var.create_oidc_provider ? 1 : 0
  url            = "https://${local.github}"
  client_id_list = ["sts.amazonaws.com"]
}

# Who may assume each role: a workflow of this repository, for a pull request (plan) or in
# its `production` environment (deploy).
data "aws_iam_policy_document" "plan_trust" {
  # checkov:skip=CKV_AWS_358: checkov cannot resolve var.github_repository; the subject names exactly one repository (owner/name) and one event or environment
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.oidc_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${var.github_repository}:pull_request"]
    }
  }
}

data "aws_iam_policy_document" "deploy_trust" {
  # checkov:skip=CKV_AWS_358: checkov cannot resolve var.github_repository; the subject names exactly one repository (owner/name) and one event or environment
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [local.oidc_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:aud"
      values   = ["sts.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "token.actions.githubusercontent.com:sub"
      values   = ["repo:${var.github_repository}:environment:production"]
    }
  }
}

resource "aws_iam_role" "plan" {
  name                 = "${var.name}-ci-plan"
  assume_role_policy   = data.aws_iam_policy_document.plan_trust.json
  max_session_duration = 3600
  depends_on           = [aws_iam_openid_connect_provider.github]
}

resource "aws_iam_role" "deploy" {
  name                 = "${var.name}-ci-deploy"
  assume_role_policy   = data.aws_iam_policy_document.deploy_trust.json
  max_session_duration = 3600
  depends_on           = [aws_iam_openid_connect_provider.github]
}

# Plan: AWS's read-only policy (Terraform refreshes every resource type infra/ has), the
# state read, and explicit denials of what read-only would still let a pull request's code
# see: the lake's data, the secrets' values, the stream's records.
resource "aws_iam_role_policy_attachment" "plan_read_only" {
  role       = aws_iam_role.plan.name
  policy_arn = "arn:aws:iam::aws:policy/ReadOnlyAccess"
}

data "aws_iam_policy_document" "plan" {
  statement {
    sid       = "ReadState"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]
  }

  statement {
    sid    = "NoData"
    effect = "Deny"
    actions = [
      "s3:GetObject",
      "s3:GetObjectVersion",
      "secretsmanager:GetSecretValue",
      "kinesis:GetRecords",
      "sqs:ReceiveMessage",
      "logs:GetLogEvents",
      "logs:FilterLogEvents",
      "logs:StartQuery",
    ]
    not_resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]
  }
}

resource "aws_iam_role_policy" "plan" {
  name   = "plan"
  role   = aws_iam_role.plan.id
  policy = data.aws_iam_policy_document.plan.json
}

# Deploy: manage the services infra/ uses, each limited to resources named after var.name
# where the service has resource-level permissions; roles only under that name and passed
# only to the services that run them.
data "aws_iam_policy_document" "deploy" {
  # checkov:skip=CKV_AWS_356: Describe/List/Get calls below have no resource to name; AWS requires "*"
  # checkov:skip=CKV_AWS_111: every write is limited to resources named after var.name, except the few whose ARNs cannot be known before they exist (EFS, security groups, event source mappings)
  # checkov:skip=CKV_AWS_109: iam writes are limited to roles named after var.name
  statement {
    sid       = "State"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:ListBucket"]
    resources = [aws_s3_bucket.state.arn, "${aws_s3_bucket.state.arn}/*"]
  }

  statement {
    sid    = "ManageNamedResources"
    effect = "Allow"
    actions = [
      "kinesis:*", "s3:*", "ecr:*", "lambda:*", "sqs:*", "sns:*", "secretsmanager:*",
      "logs:*", "cloudwatch:*", "events:*", "ecs:*",
    ]
    resources = [
      "arn:aws:kinesis:${var.aws_region}:${local.account_id}:stream/${var.name}",
      local.lake,
      "${local.lake}/*",
      "arn:aws:ecr:${var.aws_region}:${local.account_id}:repository/${var.name}",
      "arn:aws:lambda:${var.aws_region}:${local.account_id}:function:${var.name}-*",
      "arn:aws:lambda:${var.aws_region}:${local.account_id}:event-source-mapping:*",
      "arn:aws:sqs:${var.aws_region}:${local.account_id}:${var.name}-*",
      "arn:aws:sns:${var.aws_region}:${local.account_id}:${var.name}-*",
      "arn:aws:secretsmanager:${var.aws_region}:${local.account_id}:secret:${var.name}/*",
      "arn:aws:logs:${var.aws_region}:${local.account_id}:log-group:/ecs/${var.name}/*",
      "arn:aws:logs:${var.aws_region}:${local.account_id}:log-group:/aws/lambda/${var.name}-*",
      "arn:aws:cloudwatch:${var.aws_region}:${local.account_id}:alarm:${var.name}-*",
      "arn:aws:cloudwatch::${local.account_id}:dashboard/${var.name}",
      "arn:aws:events:${var.aws_region}:${local.account_id}:rule/${var.name}-*",
      "arn:aws:ecs:${var.aws_region}:${local.account_id}:cluster/${var.name}",
      "arn:aws:ecs:${var.aws_region}:${local.account_id}:service/${var.name}/*",
      "arn:aws:ecs:${var.aws_region}:${local.account_id}:task-definition/${var.name}-*",
    ]
  }

  statement {
    sid    = "ManageUnnamedResources" # their ARNs hold ids known only once they exist
    effect = "Allow"
    actions = [
      "elasticfilesystem:*",
      "ec2:CreateSecurityGroup", "ec2:DeleteSecurityGroup", "ec2:AuthorizeSecurityGroupIngress",
      "ec2:RevokeSecurityGroupIngress", "ec2:AuthorizeSecurityGroupEgress", "ec2:RevokeSecurityGroupEgress",
      "ec2:CreateTags", "ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface",
      "ecs:RegisterTaskDefinition", "ecs:DeregisterTaskDefinition", "ecr:GetAuthorizationToken",
      "lambda:CreateEventSourceMapping", "lambda:ListEventSourceMappings",
    ]
    resources = ["*"]
    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [var.aws_region]
    }
  }

  statement {
    sid    = "ManageTheDeploymentsRoles"
    effect = "Allow"
    actions = [
      "iam:CreateRole", "iam:DeleteRole", "iam:GetRole", "iam:UpdateRole", "iam:TagRole", "iam:UntagRole",
      "iam:UpdateAssumeRolePolicy", "iam:PutRolePolicy", "iam:GetRolePolicy", "iam:DeleteRolePolicy",
      "iam:ListRolePolicies", "iam:ListAttachedRolePolicies", "iam:ListInstanceProfilesForRole",
    ]
    resources = ["arn:aws:iam::${local.account_id}:role/${var.name}-*"]
  }

  statement {
    sid       = "PassTheDeploymentsRoles"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = ["arn:aws:iam::${local.account_id}:role/${var.name}-*"]
    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com", "lambda.amazonaws.com", "events.amazonaws.com"]
    }
  }

  statement {
    sid    = "Read"
    effect = "Allow"
    actions = [
      "sts:GetCallerIdentity", "ec2:Describe*", "elasticfilesystem:Describe*", "ecs:Describe*", "ecs:List*",
      "logs:Describe*", "cloudwatch:Describe*", "cloudwatch:List*", "events:Describe*", "events:List*",
      "kinesis:Describe*", "kinesis:List*", "lambda:Get*", "lambda:List*", "sqs:List*", "sns:List*",
      "secretsmanager:List*", "iam:List*", "kms:DescribeKey", "kms:ListAliases",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "deploy" {
  name   = "deploy"
  role   = aws_iam_role.deploy.id
  policy = data.aws_iam_policy_document.deploy.json
}

output "plan_role_arn" {
  description = "The repository variable AWS_PLAN_ROLE_ARN."
  value       = aws_iam_role.plan.arn
}

output "deploy_role_arn" {
  description = "The `production` environment's variable AWS_DEPLOY_ROLE_ARN."
  value       = aws_iam_role.deploy.arn
}

output "state_bucket" {
  description = "The repository variable TF_STATE_BUCKET."
  value       = aws_s3_bucket.state.bucket
}
