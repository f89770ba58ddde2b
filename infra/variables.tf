# -- where and what ---------------------------------------------------------------------------

variable "aws_region" {
  description = "AWS region for everything."
  type        = string
  default     = "eu-west-2"
}

variable "name" {
  description = "Name (and prefix) of every resource; also the Kinesis stream's name."
  type        = string
  default     = "totes-cdc"
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

variable "image_tag" {
  description = "Tag of the image in the ECR repository that the processor, reader and sync run (e.g. a git commit)."
  type        = string
}

variable "image_architecture" {
  description = "CPU architecture the image was built for: x86_64 or arm64."
  type        = string
  default     = "x86_64"
  validation {
    condition     = contains(["x86_64", "arm64"], var.image_architecture)
    error_message = "image_architecture must be x86_64 or arm64."
  }
}

variable "images_to_keep" {
  description = "How many images the ECR repository keeps."
  type        = number
  default     = 20
}

# -- network ------------------------------------------------------------------------------------

variable "subnet_ids" {
  description = "Private subnets (one per Availability Zone) for the reader and sync tasks; the source and warehouse PostgreSQL, ECR, Kinesis, S3, Secrets Manager and CloudWatch Logs must be reachable from them (NAT or VPC endpoints)."
  type        = list(string)
  validation {
    condition     = length(var.subnet_ids) > 0
    error_message = "Give at least one subnet."
  }
}

variable "security_group_ids" {
  description = "Security groups of the reader and sync tasks; the source's and the warehouse's security groups must admit them on 5432."
  type        = list(string)
}

variable "assign_public_ip" {
  description = "Give the tasks public IPs (only for public subnets without NAT)."
  type        = bool
  default     = false
}

# -- stream -------------------------------------------------------------------------------------

variable "shard_count" {
  description = "Kinesis shards: 1 MB/s and 1,000 records/s written each. Scale here, not with parallelization."
  type        = number
  default     = 2
}

variable "stream_retention_hours" {
  description = "How long Kinesis keeps records (24 to 8760 hours)."
  type        = number
  default     = 24
  validation {
    condition     = var.stream_retention_hours >= 24 && var.stream_retention_hours <= 8760
    error_message = "stream_retention_hours must be between 24 and 8760."
  }
}

# -- lake -----------------------------------------------------------------------------------------

variable "lake_bucket_name" {
  description = "Name of the S3 bucket created for the lake (globally unique)."
  type        = string
}

variable "lake_prefix" {
  description = "Prefix of the lake inside the bucket: TOTES_LAKE is s3://<bucket>/<prefix>."
  type        = string
  default     = "lake"
}

# -- processor (Lambda) -------------------------------------------------------------------------

variable "processor_memory_mb" {
  description = "Memory of the processor Lambda (CPU scales with it)."
  type        = number
  default     = 2048
}

variable "processor_timeout_seconds" {
  description = "Timeout of one processor invocation."
  type        = number
  default     = 300
}

variable "processor_batch_size" {
  description = "Most Kinesis records per invocation (each record carries many events)."
  type        = number
  default     = 100
}

variable "processor_batching_window_seconds" {
  description = "Seconds to gather a shard's records into one batch: latency against lake commits (the local --window)."
  type        = number
  default     = 1
}

variable "processor_max_retry_attempts" {
  description = "Retries of a failing batch before it is given up (recorded in the failure queue); -1: until the lake takes it. The code dead-letters bad data itself, so a batch fails only while the lake cannot be written, and a batch given up would let later watermark markers pass events that never reached the lake (guarantee 1): keep -1 unless you re-drive the failure queue by hand."
  type        = number
  default     = -1
  validation {
    condition     = var.processor_max_retry_attempts >= -1 && var.processor_max_retry_attempts <= 10000
    error_message = "processor_max_retry_attempts must be -1 (until it succeeds) or between 0 and 10000."
  }
}

variable "processor_max_record_age_seconds" {
  description = "Give up on records older than this; -1: as long as the stream keeps them."
  type        = number
  default     = -1
}

# -- reader and sync (ECS Fargate) --------------------------------------------------------------

variable "reader_cpu" {
  description = "Fargate CPU units of the reader task."
  type        = number
  default     = 1024
}

variable "reader_memory_mb" {
  description = "Memory of the reader task."
  type        = number
  default     = 2048
}

variable "slot_name" {
  description = "Replication slot of the reader on the source (TOTES_SLOT)."
  type        = string
  default     = "totes_cdc"
}

variable "publication_name" {
  description = "Publication of the reader on the source (TOTES_PUBLICATION)."
  type        = string
  default     = "totes_cdc"
}

variable "sync_cpu" {
  description = "Fargate CPU units of the sync task."
  type        = number
  default     = 1024
}

variable "sync_memory_mb" {
  description = "Memory of the sync task."
  type        = number
  default     = 4096
}

variable "sync_interval_seconds" {
  description = "Seconds between the sync's runs (totes sync --interval)."
  type        = number
  default     = 1
}

variable "container_insights" {
  description = "ECS Container Insights on the cluster (extra CloudWatch cost)."
  type        = bool
  default     = false
}

variable "log_retention_days" {
  description = "Retention of the processor's, reader's and sync's logs."
  type        = number
  default     = 30
}

variable "secret_recovery_window_days" {
  description = "Days a deleted secret can still be restored (0 deletes at once)."
  type        = number
  default     = 7
}

# -- alarms ---------------------------------------------------------------------------------------

variable "alarm_email" {
  description = "E-mail address that receives the alarms (confirm the subscription mail)."
  type        = string
}

variable "iterator_age_alarm_ms" {
  description = "Alarm when the oldest unread record is older than this for 5 minutes."
  type        = number
  default     = 60000
}

variable "processor_errors_threshold" {
  description = "Alarm when the processor Lambda fails more often than this in 5 minutes."
  type        = number
  default     = 0
}

variable "dead_letters_threshold" {
  description = "Alarm when more records/events than this are dead-lettered in 5 minutes."
  type        = number
  default     = 0
}

variable "batch_retries_alarm_periods" {
  description = "Alarm when the processor has retried batches it could not write to the lake in this many consecutive 5-minute periods."
  type        = number
  default     = 3
}

variable "unconfirmed_wal_alarm_bytes" {
  description = "Alarm when the reader holds more unconfirmed WAL than this for 15 minutes."
  type        = number
  default     = 1073741824 # 1 GiB
}

variable "reader_silent_periods" {
  description = "Alarm when the reader has not reported for this many 5-minute periods."
  type        = number
  default     = 2
}

variable "maintain_schedule" {
  description = "When the lake is maintained (EventBridge schedule expression)."
  type        = string
  default     = "rate(1 hour)"
}

variable "lake_retention_hours" {
  description = "Time travel by Delta version kept by maintenance (`totes lake maintain --retain`; by source time or LSN it reaches every point): older versions' files and log entries are removed. Stored bytes are about the live bytes plus what the pipeline writes in this long."
  type        = number
  default     = 24
  validation {
    condition     = var.lake_retention_hours >= 1 && floor(var.lake_retention_hours) == var.lake_retention_hours
    error_message = "lake_retention_hours must be a whole number of hours, at least 1."
  }
}

variable "lake_noncurrent_version_days" {
  description = "How long what maintenance deleted (or an overwrite replaced) in the lake bucket stays recoverable as a noncurrent S3 version."
  type        = number
  default     = 7
  validation {
    condition     = var.lake_noncurrent_version_days >= 1
    error_message = "lake_noncurrent_version_days must be at least 1."
  }
}

variable "maintain_cpu" {
  description = "Fargate CPU units of the maintenance task."
  type        = number
  default     = 1024
}

variable "maintain_memory_mb" {
  description = "Fargate memory of the maintenance task, in MiB."
  type        = number
  default     = 4096
}

variable "processor_silent_periods" {
  description = "Alarm when the processor has not written a batch for this many 5-minute periods."
  type        = number
  default     = 2
}

variable "runbook_url" {
  description = "Where alarm e-mails point for what to do: infra/RUNBOOK.md, ideally as a link into your repository browser."
  type        = string
  default     = "infra/RUNBOOK.md"
}

variable "sync_silent_periods" {
  description = "Alarm when the warehouse sync has not reported for this many 5-minute periods."
  type        = number
  default     = 2
}

variable "source_db_instance_id" {
  description = "RDS instance identifier of the source, for the slot-lag alarm from RDS's own metric; empty: no such alarm."
  type        = string
  default     = ""
}

variable "source_slot_lag_alarm_bytes" {
  description = "Alarm when the source's oldest replication slot retains more WAL than this for 15 minutes."
  type        = number
  default     = 5368709120 # 5 GiB
}
