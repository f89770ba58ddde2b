# The ECS cluster for the long-running stages (reader, sync), and what they share.
resource "aws_ecs_cluster" "main" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

resource "aws_cloudwatch_log_group" "reader" {
  name              = "/ecs/${var.name}/reader"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_group" "sync" {
  name              = "/ecs/${var.name}/sync"
  retention_in_days = var.log_retention_days
}
