# Alarms → one SNS topic → e-mail. Each alarm also tells the topic when it is OK again.
# What each one means, how to confirm it and what to do: RUNBOOK.md (each description links it).
#
# The topic is not KMS-encrypted: CloudWatch alarms cannot publish to a topic encrypted with
# the AWS-managed SNS key.
resource "aws_sns_topic" "alarms" {
  # checkov:skip=CKV_AWS_26: CloudWatch alarms cannot publish to a topic encrypted with the AWS-managed SNS key, and the topic carries alarm state changes only, no data
  name = "${var.name}-alarms"
}

resource "aws_sns_topic_subscription" "alarm_email" {
  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = var.alarm_email # AWS mails a confirmation link first
}

locals {
  alarm_actions = [aws_sns_topic.alarms.arn]
  runbook       = var.runbook_url # each alarm's description links its section of infra/RUNBOOK.md
}

# -- the stream and the processor --------------------------------------------------------------

# The processor is falling behind the stream (records wait longer and longer to be read).
resource "aws_cloudwatch_metric_alarm" "stream_iterator_age" {
  alarm_name          = "${var.name}-processor-behind-stream"
  alarm_description   = "Oldest record the processor has not read yet is older than ${var.iterator_age_alarm_ms} ms. Runbook: ${local.runbook}#processor-behind-stream"
  namespace           = "AWS/Kinesis"
  metric_name         = "GetRecords.IteratorAgeMilliseconds"
  dimensions          = { StreamName = aws_kinesis_stream.changes.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 5
  datapoints_to_alarm = 5
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.iterator_age_alarm_ms
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The processor function failed as a whole (exception, timeout, out of memory).
resource "aws_cloudwatch_metric_alarm" "processor_errors" {
  alarm_name          = "${var.name}-processor-errors"
  alarm_description   = "The processor Lambda failed more than ${var.processor_errors_threshold} times in 5 minutes. Runbook: ${local.runbook}#processor-errors"
  namespace           = "AWS/Lambda"
  metric_name         = "Errors"
  dimensions          = { FunctionName = aws_lambda_function.processor.function_name }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.processor_errors_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Guarantee 8: records or events went to the lake's dead letters (the processor's own metric).
resource "aws_cloudwatch_metric_alarm" "dead_letters" {
  alarm_name          = "${var.name}-dead-letters"
  alarm_description   = "The processor dead-lettered more than ${var.dead_letters_threshold} records/events in 5 minutes. Runbook: ${local.runbook}#dead-letters"
  namespace           = local.emf_namespace
  metric_name         = "DeadLetters"
  dimensions          = { service = local.processor_service }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.dead_letters_threshold
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# A batch keeps failing because the lake cannot be written (S3 or the lake unreachable): it
# is retried, with backoff, until the lake takes it, and the shard waits meanwhile. Bad data
# never gets here (it is dead-lettered); the processor logs each retry with its reason.
resource "aws_cloudwatch_metric_alarm" "processor_retrying" {
  alarm_name          = "${var.name}-processor-retrying"
  alarm_description   = "The processor has been retrying batches it cannot write to the lake for ${var.batch_retries_alarm_periods * 5} minutes. Runbook: ${local.runbook}#processor-retrying"
  namespace           = local.emf_namespace
  metric_name         = "BatchRetries"
  dimensions          = { service = local.processor_service }
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = var.batch_retries_alarm_periods
  datapoints_to_alarm = var.batch_retries_alarm_periods
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The event source mapping gave up on a batch after its retries: those records are not in
# the lake.
resource "aws_cloudwatch_metric_alarm" "processor_gave_up" {
  alarm_name          = "${var.name}-processor-gave-up"
  alarm_description   = "A batch was skipped after its retries; its position is in the failure queue. Runbook: ${local.runbook}#processor-gave-up"
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.processor_failures.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The processor reports every batch it writes, marker-only batches included, and the reader
# puts a marker into every shard at least every heartbeat (10 s) while it streams, idle
# source or not. No report means nothing is writing the lake: the function is not invoked
# (event source mapping disabled, concurrency 0) or fails before it reports. The iterator-age
# alarm cannot tell: Kinesis measures iterator age on GetRecords calls, and a stopped
# consumer makes none.
resource "aws_cloudwatch_metric_alarm" "processor_silent" {
  alarm_name          = "${var.name}-processor-silent"
  alarm_description   = "The processor has not written a batch for ${var.processor_silent_periods * 5} minutes. Runbook: ${local.runbook}#processor-silent"
  namespace           = local.emf_namespace
  metric_name         = "Events"
  dimensions          = { service = local.processor_service }
  statistic           = "SampleCount"
  period              = 300
  evaluation_periods  = var.processor_silent_periods
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# -- the reader ---------------------------------------------------------------------------------

# Guarantee 7: WAL the reader has received but not yet confirmed to PostgreSQL (the source
# keeps it until then).
resource "aws_cloudwatch_metric_alarm" "reader_unconfirmed_wal" {
  alarm_name          = "${var.name}-reader-unconfirmed-wal"
  alarm_description   = "The slot holds more than ${var.unconfirmed_wal_alarm_bytes} bytes of WAL the reader has not confirmed. Runbook: ${local.runbook}#reader-unconfirmed-wal"
  namespace           = local.emf_namespace
  metric_name         = "UnconfirmedWalBytes"
  dimensions          = { service = local.reader_service }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.unconfirmed_wal_alarm_bytes
  treat_missing_data  = "notBreaching" # a silent reader is the next alarm's business
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The slot was invalidated (max_slot_wal_keep_size) or dropped: the WAL since it was last
# confirmed is gone. The reader says so in one sentence, exits, and reports SlotLost each time
# the service restarts it, until `totes reader --reset` starts over (infra/README.md).
resource "aws_cloudwatch_metric_alarm" "reader_slot_lost" {
  alarm_name          = "${var.name}-reader-slot-lost"
  alarm_description   = "The reader's replication slot was invalidated or dropped: run the reader once with --reset. Runbook: ${local.runbook}#reader-slot-lost"
  namespace           = local.emf_namespace
  metric_name         = "SlotLost"
  dimensions          = { service = local.reader_service }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanOrEqualToThreshold"
  threshold           = 1
  treat_missing_data  = "notBreaching" # reported only when it happens
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The reader reports every few seconds while it streams; no report means it is down, stuck,
# or still in its initial snapshot (it reports once streaming starts).
resource "aws_cloudwatch_metric_alarm" "reader_silent" {
  alarm_name          = "${var.name}-reader-silent"
  alarm_description   = "The reader has not reported for ${var.reader_silent_periods * 5} minutes. Runbook: ${local.runbook}#reader-silent"
  namespace           = local.emf_namespace
  metric_name         = "EventsPerSecond"
  dimensions          = { service = local.reader_service }
  statistic           = "SampleCount"
  period              = 300
  evaluation_periods  = var.reader_silent_periods
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# The sync reports every few seconds (runs and events applied); no report means the warehouse
# has stopped following the lake.
resource "aws_cloudwatch_metric_alarm" "sync_silent" {
  alarm_name          = "${var.name}-sync-silent"
  alarm_description   = "The warehouse sync has not reported for ${var.sync_silent_periods * 5} minutes. Runbook: ${local.runbook}#sync-silent"
  namespace           = local.emf_namespace
  metric_name         = "SyncRuns"
  dimensions          = { service = local.sync_service }
  statistic           = "SampleCount"
  period              = 300
  evaluation_periods  = var.sync_silent_periods
  comparison_operator = "LessThanThreshold"
  threshold           = 1
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# A verification (`totes verify --emf`, or `totes run --verify-every`) found rows where the
# source, the lake and the warehouse disagree at one LSN. No verification, no datapoint: its
# schedule is not watched here.
resource "aws_cloudwatch_metric_alarm" "verify_mismatch" {
  alarm_name          = "${var.name}-verify-mismatch"
  alarm_description   = "A verification found rows where source, lake and warehouse differ at one LSN. Runbook: ${local.runbook}#verify-mismatch"
  namespace           = local.emf_namespace
  metric_name         = "MismatchedRows"
  dimensions          = { service = local.verify_service }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}

# Guarantee 7 from the source's side, when the source is an RDS instance: the WAL retained by
# its oldest replication slot, reported by RDS itself (so it also rises while the reader is
# down). Off unless source_db_instance_id is set.
resource "aws_cloudwatch_metric_alarm" "source_slot_lag" {
  count               = var.source_db_instance_id == "" ? 0 : 1
  alarm_name          = "${var.name}-source-slot-lag"
  alarm_description   = "The source's oldest replication slot retains more than ${var.source_slot_lag_alarm_bytes} bytes of WAL. Runbook: ${local.runbook}#source-slot-lag"
  namespace           = "AWS/RDS"
  metric_name         = "OldestReplicationSlotLag"
  dimensions          = { DBInstanceIdentifier = var.source_db_instance_id }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.source_slot_lag_alarm_bytes
  treat_missing_data  = "breaching"
  alarm_actions       = local.alarm_actions
  ok_actions          = local.alarm_actions
}
