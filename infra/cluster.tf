# The ECS cluster for the long-running stages (reader, sync), and what they share.
resource "aws_ecs_cluster" "main" {
  # checkov:skip=CKV_AWS_65: off by default for its cost (var.container_insights turns it on); the alarms watch the stages' own metrics
  name = var.name

  setting {
    name  = "containerInsights"
    value = var.container_insights ? "enabled" : "disabled"
  }
}

resource "aws_cloudwatch_log_group" "reader" {
  # checkov:skip=CKV_AWS_158: CloudWatch Logs encrypts every log group at rest; the logs hold no secret or raw personal data
  # checkov:skip=CKV_AWS_338: operational logs kept var.log_retention_days (30 by default); the lake is the record
  name              = "/ecs/${var.name}/reader"
  retention_in_days = var.log_retention_days
}

resource "aws_cloudwatch_log_group" "sync" {
  # checkov:skip=CKV_AWS_158: CloudWatch Logs encrypts every log group at rest; the logs hold no secret or raw personal data
  # checkov:skip=CKV_AWS_338: operational logs kept var.log_retention_days (30 by default); the lake is the record
  name              = "/ecs/${var.name}/sync"
  retention_in_days = var.log_retention_days
}
