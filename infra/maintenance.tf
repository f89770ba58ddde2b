# Lake maintenance: `totes lake maintain` (compaction, checkpoint, vacuum, log cleanup) as a
# Fargate task run on a schedule. The processor adds small files with every batch and every
# state merge rewrites files; a lake never maintained grows by what is written, not by what
# it holds, and slows its writers and readers down. Maintenance is safe beside them and
# keeps `lake_retention_hours` of time travel (lake/maintenance.py). It is the only role
# that may delete lake objects.
resource "aws_cloudwatch_log_group" "maintain" {
  # checkov:skip=CKV_AWS_158: CloudWatch Logs encrypts every log group at rest; the logs hold no secret or raw personal data
  # checkov:skip=CKV_AWS_338: operational logs kept var.log_retention_days (30 by default); the lake is the record
  name              = "/ecs/${var.name}/maintain"
  retention_in_days = var.log_retention_days
}

resource "aws_ecs_task_definition" "maintain" {
  family                   = "${var.name}-maintain"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.maintain_cpu
  memory                   = var.maintain_memory_mb
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.maintain.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.image_architecture == "arm64" ? "ARM64" : "X86_64"
  }

  container_definitions = jsonencode([{
    name      = "maintain"
    image     = local.image_uri
    essential = true
    command   = ["totes", "lake", "maintain", "--retain", "${var.lake_retention_hours}h"]
    environment = [
      { name = "TOTES_LAKE", value = local.lake_uri },
      { name = "TOTES_HOME", value = "/tmp/totes" },
      { name = "AWS_REGION", value = var.aws_region },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.maintain.name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "maintain"
      }
    }
  }])
}

resource "aws_cloudwatch_event_rule" "maintain" {
  name                = "${var.name}-maintain"
  description         = "Compact, checkpoint and vacuum the lake."
  schedule_expression = var.maintain_schedule
}

resource "aws_cloudwatch_event_target" "maintain" {
  rule     = aws_cloudwatch_event_rule.maintain.name
  arn      = aws_ecs_cluster.main.arn
  role_arn = aws_iam_role.maintain_schedule.arn

  ecs_target {
    task_definition_arn = aws_ecs_task_definition.maintain.arn
    task_count          = 1
    launch_type         = "FARGATE"
    network_configuration {
      subnets          = var.subnet_ids
      security_groups  = var.security_group_ids
      assign_public_ip = var.assign_public_ip
    }
  }
}

# -- its roles ----------------------------------------------------------------------------------
# The task rewrites and deletes lake files: read, write and delete under the lake prefix.
resource "aws_iam_role" "maintain" {
  name               = "${var.name}-maintain"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_trust.json
}

data "aws_iam_policy_document" "maintain" {
  source_policy_documents = [data.aws_iam_policy_document.lake_read_write.json]

  statement {
    sid       = "DeleteWhatVacuumAndLogCleanupRemove"
    effect    = "Allow"
    actions   = ["s3:DeleteObject"]
    resources = [local.lake_objects]
  }
}

resource "aws_iam_role_policy" "maintain" {
  name   = "maintain"
  role   = aws_iam_role.maintain.id
  policy = data.aws_iam_policy_document.maintain.json
}

# EventBridge runs the task: RunTask of this task definition only, and passing its two roles.
resource "aws_iam_role" "maintain_schedule" {
  name               = "${var.name}-maintain-schedule"
  assume_role_policy = data.aws_iam_policy_document.service_trust["events.amazonaws.com"].json
}

data "aws_iam_policy_document" "maintain_schedule" {
  statement {
    sid       = "RunMaintenance"
    effect    = "Allow"
    actions   = ["ecs:RunTask"]
    resources = [aws_ecs_task_definition.maintain.arn]
    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.main.arn]
    }
  }

  statement {
    sid       = "PassItsRoles"
    effect    = "Allow"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.maintain.arn, aws_iam_role.task_execution.arn]
  }
}

resource "aws_iam_role_policy" "maintain_schedule" {
  name   = "maintain-schedule"
  role   = aws_iam_role.maintain_schedule.id
  policy = data.aws_iam_policy_document.maintain_schedule.json
}
