# The reader: `totes reader` on ECS Fargate, one task, forever. It owns the replication slot,
# so two readers must never run at once: the service stops the old task before starting the
# new one (minimum healthy 0 %, maximum 100 %).
#
# The reader keeps a small state file (which slot it created, whether its snapshot is
# complete). A Fargate task's disk does not survive a restart, and a reader that loses that
# state mid-snapshot would take the snapshot as done, so the state lives on EFS.

resource "aws_efs_file_system" "reader_state" {
  # checkov:skip=CKV_AWS_184: encrypted at rest with the AWS-managed key; it holds the reader's small state file (slot name, snapshot progress), no data
  creation_token = "${var.name}-reader-state"
  encrypted      = true
}

resource "aws_security_group" "reader_state" {
  name        = "${var.name}-reader-state"
  description = "NFS to the reader state file system from the task security groups"
  vpc_id      = local.vpc_id

  ingress {
    description     = "NFS from the tasks"
    from_port       = 2049
    to_port         = 2049
    protocol        = "tcp"
    security_groups = var.security_group_ids
  }
}

# One mount target per subnet: give one subnet per Availability Zone.
resource "aws_efs_mount_target" "reader_state" {
  for_each        = toset(var.subnet_ids)
  file_system_id  = aws_efs_file_system.reader_state.id
  subnet_id       = each.value
  security_groups = [aws_security_group.reader_state.id]
}

resource "aws_efs_access_point" "reader_state" {
  file_system_id = aws_efs_file_system.reader_state.id

  posix_user {
    uid = 1000
    gid = 1000
  }

  root_directory {
    path = "/reader"
    creation_info {
      owner_uid   = 1000
      owner_gid   = 1000
      permissions = "0750"
    }
  }
}

resource "aws_ecs_task_definition" "reader" {
  family                   = "${var.name}-reader"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.reader_cpu
  memory                   = var.reader_memory_mb
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.reader.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.image_architecture == "arm64" ? "ARM64" : "X86_64"
  }

  volume {
    name = "reader-state"
    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.reader_state.id
      transit_encryption = "ENABLED"
      authorization_config {
        access_point_id = aws_efs_access_point.reader_state.id
        iam             = "ENABLED"
      }
    }
  }

  container_definitions = jsonencode([{
    name      = "reader"
    image     = local.image_uri
    essential = true
    # --emf: the reader's metrics as embedded-metric-format lines on stdout, which
    # CloudWatch Logs turns into the metrics the alarms watch.
    command = ["totes", "reader", "--emf", "--shards", tostring(var.shard_count), "--state-dir", "/state"]
    environment = [
      { name = "TOTES_STREAM", value = aws_kinesis_stream.changes.name },
      # The slot is confirmed only up to the lake watermark: the WAL keeps every event the
      # lake lacks, whatever happens to the stream or the processor.
      { name = "TOTES_LAKE", value = local.lake_uri },
      { name = "TOTES_SLOT", value = var.slot_name },
      { name = "TOTES_PUBLICATION", value = var.publication_name },
      { name = "TOTES_HOME", value = "/tmp/totes" },
      { name = "AWS_REGION", value = var.aws_region },
      # The DSN itself is read from Secrets Manager by the task (its role may), so it is in
      # no environment: only the secret's ARN is.
      { name = "TOTES_SOURCE_DSN_SECRET", value = aws_secretsmanager_secret.source_dsn.arn },
      { name = "TOTES_PERSONAL_DATA_KEY_SECRET", value = aws_secretsmanager_secret.personal_data_key.arn },
    ]
    mountPoints = [{ sourceVolume = "reader-state", containerPath = "/state", readOnly = false }]
    stopTimeout = 60 # SIGTERM: the reader stops cleanly, confirming what is durable
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.reader.name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "reader"
      }
    }
  }])
}

resource "aws_ecs_service" "reader" {
  # checkov:skip=CKV_AWS_332: pinned to 1.4.0, the version with EFS volumes, so a platform change never rides along with an unrelated apply
  name             = "reader"
  cluster          = aws_ecs_cluster.main.id
  task_definition  = aws_ecs_task_definition.reader.arn
  launch_type      = "FARGATE"
  platform_version = "1.4.0" # EFS volumes
  desired_count    = 1

  # Never two readers on one slot: stop the old task, then start the new one.
  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = var.assign_public_ip
  }

  depends_on = [aws_efs_mount_target.reader_state]
}
