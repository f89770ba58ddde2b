# One CloudWatch dashboard for the pipeline: what each stage does, how far behind it is, what
# the source keeps, what went wrong, and every alarm's state. Every metric here is one the
# code emits (EMF, namespace totes-cdc) or one an alarm watches (tests/test_infra_ops.py).

locals {
  dashboard_period = 60
  own              = local.emf_namespace

  dashboard_widgets = [
    {
      type = "metric", x = 0, y = 0, width = 12, height = 6
      properties = {
        title  = "Throughput per stage"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        metrics = [
          [local.own, "EventsPerSecond", "service", local.reader_service, { stat = "Average", label = "reader: changes read per second", yAxis = "right" }],
          [local.own, "EventsAppended", "service", local.processor_service, { stat = "Sum", label = "processor: events into the lake per minute" }],
          [local.own, "EventsApplied", "service", local.sync_service, { stat = "Sum", label = "sync: events into the warehouse per minute" }],
        ]
      }
    },
    {
      type = "metric", x = 12, y = 0, width = 12, height = 6
      properties = {
        title  = "Commit to warehouse: lag per stage"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        metrics = [
          [local.own, "SecondsBehindSource", "service", local.reader_service, { stat = "Maximum", label = "source commit -> reader (s)" }],
          [local.own, "ArrivalLagSeconds", "service", local.processor_service, { stat = "Maximum", label = "stream -> lake (s)" }],
          [local.own, "WarehouseBehindLakeBytes", "service", local.sync_service, { stat = "Maximum", label = "warehouse behind the lake watermark (bytes of WAL)", yAxis = "right" }],
        ]
      }
    },
    {
      type = "metric", x = 0, y = 6, width = 12, height = 6
      properties = {
        title  = "WAL retained on the source"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        metrics = [
          [local.own, "UnconfirmedWalBytes", "service", local.reader_service, { stat = "Maximum", label = "received, not yet confirmed by the reader" }],
        ]
        annotations = { horizontal = [{ label = "reader-unconfirmed-wal", value = var.unconfirmed_wal_alarm_bytes }] }
      }
    },
    {
      type = "metric", x = 12, y = 6, width = 12, height = 6
      properties = {
        title  = "Dead letters, retries, rejected versions"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        stat   = "Sum"
        metrics = [
          [local.own, "DeadLetters", "service", local.processor_service, { label = "dead-lettered (lake _dead_letters)" }],
          [local.own, "BatchRetries", "service", local.processor_service, { label = "batches retried (lake unwritable)" }],
          [local.own, "FactVersionsRejected", "service", local.sync_service, { label = "fact versions set aside (_sync_rejected)" }],
        ]
      }
    },
    {
      type = "metric", x = 0, y = 12, width = 12, height = 6
      properties = {
        title  = "Processor Lambda errors"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        metrics = [
          ["AWS/Lambda", "Errors", "FunctionName", aws_lambda_function.processor.function_name, { stat = "Sum" }],
        ]
      }
    },
    {
      type = "metric", x = 12, y = 12, width = 12, height = 6
      properties = {
        title  = "Iterator age (oldest unread record)"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        metrics = [
          ["AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", "StreamName", aws_kinesis_stream.changes.name, { stat = "Maximum" }],
        ]
        annotations = { horizontal = [{ label = "processor-behind-stream", value = var.iterator_age_alarm_ms }] }
      }
    },
  ]

  # RDS's own measure of the WAL the source keeps for its oldest slot, when the source is RDS.
  dashboard_source_widgets = [
    {
      type = "metric", x = 0, y = 18, width = 12, height = 6
      properties = {
        title  = "WAL retained by the source's oldest slot (RDS)"
        region = var.aws_region
        view   = "timeSeries"
        period = local.dashboard_period
        metrics = [
          ["AWS/RDS", "OldestReplicationSlotLag", "DBInstanceIdentifier", var.source_db_instance_id, { stat = "Maximum" }],
        ]
      }
    },
  ]

  dashboard_alarms = concat(
    [
      aws_cloudwatch_metric_alarm.stream_iterator_age.arn,
      aws_cloudwatch_metric_alarm.processor_errors.arn,
      aws_cloudwatch_metric_alarm.dead_letters.arn,
      aws_cloudwatch_metric_alarm.processor_retrying.arn,
      aws_cloudwatch_metric_alarm.processor_gave_up.arn,
      aws_cloudwatch_metric_alarm.processor_silent.arn,
      aws_cloudwatch_metric_alarm.reader_unconfirmed_wal.arn,
      aws_cloudwatch_metric_alarm.reader_slot_lost.arn,
      aws_cloudwatch_metric_alarm.reader_silent.arn,
      aws_cloudwatch_metric_alarm.sync_silent.arn,
      aws_cloudwatch_metric_alarm.verify_mismatch.arn,
    ],
    aws_cloudwatch_metric_alarm.source_slot_lag[*].arn,
  )
}

resource "aws_cloudwatch_dashboard" "pipeline" {
  dashboard_name = var.name
  dashboard_body = jsonencode({
    widgets = concat(
      [{
        type       = "alarm", x = 0, y = 24, width = 24, height = 3
        properties = { title = "Alarms (runbook: infra/RUNBOOK.md)", alarms = local.dashboard_alarms }
      }],
      local.dashboard_widgets,
      var.source_db_instance_id == "" ? [] : local.dashboard_source_widgets,
    )
  })
}
