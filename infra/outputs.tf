# Names and ARNs only: no secret value is ever an output.

output "stream_name" {
  description = "The Kinesis stream (TOTES_STREAM)."
  value       = aws_kinesis_stream.changes.name
}

output "lake_uri" {
  description = "The lake (TOTES_LAKE), e.g. for `totes query` or `totes lake history` from a workstation."
  value       = local.lake_uri
}

output "ecr_repository_url" {
  description = "Where to push the image."
  value       = aws_ecr_repository.app.repository_url
}

output "processor_function_name" {
  description = "The processor Lambda."
  value       = aws_lambda_function.processor.function_name
}

output "processor_failure_queue_url" {
  description = "Batches the event source mapping gave up on."
  value       = aws_sqs_queue.processor_failures.url
}

output "ecs_cluster_name" {
  description = "The cluster running the reader and sync services."
  value       = aws_ecs_cluster.main.name
}

output "source_dsn_secret_arn" {
  description = "Secret to fill with the source DSN (TOTES_SOURCE_DSN)."
  value       = aws_secretsmanager_secret.source_dsn.arn
}

output "personal_data_key_secret_arn" {
  description = "Secret to fill with the key of the personal-data policy's hashes (TOTES_PERSONAL_DATA_KEY_SECRET)."
  value       = aws_secretsmanager_secret.personal_data_key.arn
}

output "warehouse_dsn_secret_arn" {
  description = "Secret to fill with the warehouse DSN (TOTES_WAREHOUSE)."
  value       = aws_secretsmanager_secret.warehouse_dsn.arn
}

output "alarm_topic_arn" {
  description = "SNS topic the alarms publish to."
  value       = aws_sns_topic.alarms.arn
}
