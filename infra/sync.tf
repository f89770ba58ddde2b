# The sync: `totes sync` on ECS Fargate, continuously applying the lake's changes to the
# warehouse up to the lake watermark. Its progress lives in the warehouse (exactly once), so
# the task needs no disk of its own; still, one at a time.
resource "aws_ecs_task_definition" "sync" {
  family                   = "${var.name}-sync"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.sync_cpu
  memory                   = var.sync_memory_mb
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.sync.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.image_architecture == "arm64" ? "ARM64" : "X86_64"
  }

  container_definitions = jsonencode([{
    name      = "sync"
    image     = local.image_uri
    essential = true
    command   = ["totes", "sync", "--emf", "--interval", tostring(var.sync_interval_seconds)]
    environment = [
      { name = "TOTES_LAKE", value = local.lake_uri },
      { name = "TOTES_STREAM", value = aws_kinesis_stream.changes.name },
      { name = "TOTES_HOME", value = "/tmp/totes" },
      { name = "AWS_REGION", value = var.aws_region },
      { name = "TOTES_WAREHOUSE_SECRET", value = aws_secretsmanager_secret.warehouse_dsn.arn },
    ]
    stopTimeout = 60
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.sync.name
        awslogs-region        = var.aws_region
        awslogs-stream-prefix = "sync"
      }
    }
  }])
}

resource "aws_ecs_service" "sync" {
  name            = "sync"
  cluster         = aws_ecs_cluster.main.id
  task_definition = aws_ecs_task_definition.sync.arn
  launch_type     = "FARGATE"
  desired_count   = 1

  deployment_minimum_healthy_percent = 0
  deployment_maximum_percent         = 100

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = var.security_group_ids
    assign_public_ip = var.assign_public_ip
  }
}
