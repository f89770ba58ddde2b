# One role per job, each allowed only what its code calls. No wildcard actions; a "*"
# resource only where the action has no resource to name (marked where it occurs).

locals {
  lake_objects = "${aws_s3_bucket.lake.arn}/${local.lake_prefix}/*"
  # The watermark table (lake/progress.py): all the reader reads of the lake.
  lake_progress_prefix  = "${local.lake_prefix}/_progress/"
  lake_progress_objects = "${aws_s3_bucket.lake.arn}/${local.lake_prefix}/_progress/*"
  # The tables the reader's initial snapshot writes straight into (cdc_reader/bulk_snapshot.py).
  lake_table_prefixes = [for kind in ["changes", "tables", "_dead_letters"] : "${local.lake_prefix}/${kind}/"]
  lake_table_objects  = [for prefix in local.lake_table_prefixes : "${aws_s3_bucket.lake.arn}/${prefix}*"]
}

# -- trust ------------------------------------------------------------------------------------

data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:aws:ecs:${var.aws_region}:${local.account_id}:*"]
    }
  }
}

# Roles assumed by an AWS service with no further condition: the processor (Lambda) and the
# maintenance schedule (EventBridge).
data "aws_iam_policy_document" "service_trust" {
  for_each = toset(["lambda.amazonaws.com", "events.amazonaws.com"])
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = [each.key]
    }
  }
}

# Reading and writing the lake, never deleting: the processor writes it, the maintenance
# compacts it (and alone may delete, see maintenance.tf and the bucket policy in lake.tf).
data "aws_iam_policy_document" "lake_read_write" {
  statement {
    sid       = "ListLake"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn] # the bucket holds only the lake
  }

  statement {
    sid       = "WriteLake"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = [local.lake_objects]
  }
}

# -- reader task --------------------------------------------------------------------------------
# `totes reader` puts records and reads the shard map. On start it describes the stream
# (DescribeStreamSummary: it exists, Terraform owns it, so the reader never creates it) and
# compares its shard count. It confirms to PostgreSQL only what the lake has committed (the
# lake watermark), so it reads the lake's _progress table, and writes nothing there. Its
# initial snapshot goes straight into the lake's change logs and state tables (and rows the
# lake cannot hold into its dead letters): it reads and writes those prefixes, and deletes
# nothing anywhere. It reads its source DSN from that one secret. Its metrics go out as
# log lines (EMF on stdout), so it needs no CloudWatch permission.

resource "aws_iam_role" "reader" {
  name               = "${var.name}-reader"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "reader" {
  statement {
    sid    = "PublishChanges"
    effect = "Allow"
    actions = [
      "kinesis:PutRecords",
      "kinesis:ListShards",
      "kinesis:DescribeStreamSummary",
    ]
    resources = [aws_kinesis_stream.changes.arn]
  }

  statement {
    sid       = "ListLakeProgress"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${local.lake_progress_prefix}*"]
    }
  }

  statement {
    sid       = "ReadLakeProgress"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.lake_progress_objects]
  }

  statement {
    sid       = "ListLakeTables"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = [for prefix in local.lake_table_prefixes : "${prefix}*"]
    }
  }

  statement {
    sid       = "WriteLakeTables"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:PutObject"]
    resources = local.lake_table_objects
  }

  statement {
    sid       = "ReadSourceDsn"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.source_dsn.arn, aws_secretsmanager_secret.personal_data_key.arn]
  }

  statement {
    sid       = "ReaderState"
    effect    = "Allow"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.reader_state.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.reader_state.arn]
    }
  }
}

resource "aws_iam_role_policy" "reader" {
  name   = "reader"
  role   = aws_iam_role.reader.id
  policy = data.aws_iam_policy_document.reader.json
}

# -- processor Lambda ---------------------------------------------------------------------------
# Reads the stream (through the event source mapping), reads, writes and deletes objects under
# the lake prefix (Delta commits, data files, dead letters), records given-up batches in the
# failure queue, and writes its logs (its metrics are EMF log lines).

resource "aws_iam_role" "processor" {
  name               = "${var.name}-processor"
  assume_role_policy = data.aws_iam_policy_document.service_trust["lambda.amazonaws.com"].json
}

data "aws_iam_policy_document" "processor" {
  source_policy_documents = [data.aws_iam_policy_document.lake_read_write.json]

  statement {
    sid    = "ReadStream"
    effect = "Allow"
    actions = [
      "kinesis:GetRecords",
      "kinesis:GetShardIterator",
      "kinesis:DescribeStream",
      "kinesis:DescribeStreamSummary",
      "kinesis:ListShards",
    ]
    resources = [aws_kinesis_stream.changes.arn]
  }

  statement {
    sid       = "RecordGivenUpBatches"
    effect    = "Allow"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.processor_failures.arn]
  }

  statement {
    sid       = "Logs"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.processor.arn}:*"]
  }
}

resource "aws_iam_role_policy" "processor" {
  name   = "processor"
  role   = aws_iam_role.processor.id
  policy = data.aws_iam_policy_document.processor.json
}

# -- sync task ----------------------------------------------------------------------------------
# Reads the lake (change logs and the _progress watermark table). It also lists the stream's
# shards, because the lake watermark is the minimum over the open shards; without it the sync
# falls back to the shards the lake has markers for. Its warehouse is reached over the network
# with the DSN it reads from Secrets Manager itself (TOTES_WAREHOUSE_SECRET).

resource "aws_iam_role" "sync" {
  name               = "${var.name}-sync"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "sync" {
  statement {
    sid       = "ListLake"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
  }

  statement {
    sid       = "ReadLake"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.lake_objects]
  }

  statement {
    sid       = "ListShards"
    effect    = "Allow"
    actions   = ["kinesis:ListShards"]
    resources = [aws_kinesis_stream.changes.arn]
  }

  statement {
    sid       = "ReadWarehouseDsn"
    effect    = "Allow"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [aws_secretsmanager_secret.warehouse_dsn.arn]
  }
}

resource "aws_iam_role_policy" "sync" {
  name   = "sync"
  role   = aws_iam_role.sync.id
  policy = data.aws_iam_policy_document.sync.json
}

# -- task execution (ECS itself: pull the image, ship logs) ------------------------------------

resource "aws_iam_role" "task_execution" {
  name               = "${var.name}-task-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "task_execution" {
  statement {
    sid       = "EcrLogin"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions: AWS requires "*"
  }

  statement {
    sid       = "PullImage"
    effect    = "Allow"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = [aws_ecr_repository.app.arn]
  }

  statement {
    sid     = "Logs"
    effect  = "Allow"
    actions = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [
      "${aws_cloudwatch_log_group.reader.arn}:*",
      "${aws_cloudwatch_log_group.sync.arn}:*",
      "${aws_cloudwatch_log_group.maintain.arn}:*",
    ]
  }
}

resource "aws_iam_role_policy" "task_execution" {
  name   = "task-execution"
  role   = aws_iam_role.task_execution.id
  policy = data.aws_iam_policy_document.task_execution.json
}
