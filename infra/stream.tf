# The change stream between the reader and the processor. Events of one row always go to one
# shard (the reader's partition key), in order.
resource "aws_kinesis_stream" "changes" {
  name             = var.name
  shard_count      = var.shard_count
  retention_period = var.stream_retention_hours

  encryption_type = "KMS"
  kms_key_id      = "alias/aws/kinesis" # the AWS-managed key: no key policy to maintain

  stream_mode_details {
    stream_mode = "PROVISIONED"
  }
}
