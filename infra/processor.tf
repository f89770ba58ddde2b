# The stream processor: stream_processors/handler.py `handler`, from the project's image,
# fed by a Kinesis event source mapping. It reads TOTES_LAKE and writes the lake; records it
# cannot decode (and events the lake refuses) are dead-lettered into the lake by the code
# itself, so a failed batch here means the lake could not be written, not bad data.
resource "aws_cloudwatch_log_group" "processor" {
  # checkov:skip=CKV_AWS_158: CloudWatch Logs encrypts every log group at rest; the logs hold no secret or raw personal data
  # checkov:skip=CKV_AWS_338: operational logs kept var.log_retention_days (30 by default); the lake is the record
  name              = "/aws/lambda/${var.name}-processor"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "processor" {
  # checkov:skip=CKV_AWS_116: a function DLQ catches asynchronous invocations only; this one is invoked by the Kinesis mapping, whose on_failure destination is the SQS queue below
  # checkov:skip=CKV_AWS_117: it reaches only Kinesis and S3, AWS APIs over TLS scoped by its role; a VPC would add NAT or endpoints and reach nothing more
  # checkov:skip=CKV_AWS_115: concurrency is bounded by the event source mapping: one invocation per shard (parallelization_factor = 1)
  # checkov:skip=CKV_AWS_272: code signing applies to .zip packages only; this is a container image from the project's own immutable-tag repository
  # checkov:skip=CKV_AWS_173: the environment holds a lake URI and a path, no secret; Lambda encrypts it at rest with its AWS-managed key
  # checkov:skip=CKV_AWS_50: X-Ray would need xray:PutTraceSegments on '*'; the processor reports its own metrics (EMF) and logs
  function_name = "${var.name}-processor"
  role          = aws_iam_role.processor.arn
  package_type  = "Image"
  image_uri     = local.image_uri
  architectures = [var.image_architecture]
  memory_size   = var.processor_memory_mb
  timeout       = var.processor_timeout_seconds

  # The image is a plain Python image (ENTRYPOINT []): Lambda runs the handler through the
  # runtime interface client, which the image must contain (see README.md).
  image_config {
    entry_point = ["python", "-m", "awslambdaric"]
    command     = ["stream_processors.handler.handler"]
  }

  environment {
    variables = {
      TOTES_LAKE = local.lake_uri
      TOTES_HOME = "/tmp/totes" # the only writable place in Lambda
    }
  }

  logging_config {
    log_format = "Text" # powertools writes JSON logs and EMF lines itself
    log_group  = aws_cloudwatch_log_group.processor.name
  }

  depends_on = [aws_cloudwatch_log_group.processor, aws_iam_role_policy.processor]
}

# Where the event source mapping records a batch it gave up on (shard and sequence-number
# range, not the data): read it and re-drive from the stream while it is retained.
resource "aws_sqs_queue" "processor_failures" {
  name                      = "${var.name}-processor-failures"
  message_retention_seconds = 1209600 # 14 days, the maximum
  sqs_managed_sse_enabled   = true
}

resource "aws_lambda_event_source_mapping" "processor" {
  event_source_arn  = aws_kinesis_stream.changes.arn
  function_name     = aws_lambda_function.processor.arn
  starting_position = "TRIM_HORIZON" # a new mapping starts at the oldest retained record

  batch_size                         = var.processor_batch_size
  maximum_batching_window_in_seconds = var.processor_batching_window_seconds

  # Guarantee 3 (order per row): one invocation per shard at a time, so a shard's batches
  # reach the lake in order. More throughput comes from more shards, never from this.
  parallelization_factor = 1

  # The handler reports the first record to retry (partial batch response); a failing batch
  # is split to find it and retried until the lake takes it (by default: giving a batch up
  # would let later watermarks pass it); if retries are bounded, its position goes to the
  # failure queue (and the processor-failures alarm fires).
  function_response_types        = ["ReportBatchItemFailures"]
  bisect_batch_on_function_error = true
  maximum_retry_attempts         = var.processor_max_retry_attempts
  maximum_record_age_in_seconds  = var.processor_max_record_age_seconds

  destination_config {
    on_failure {
      destination_arn = aws_sqs_queue.processor_failures.arn
    }
  }
}
