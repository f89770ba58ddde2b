# The lake: Delta tables under s3://<bucket>/<lake_prefix>. Once the reader's slot has
# confirmed an LSN, the lake is the only record of the events before it, so:
# - only the maintenance task deletes objects (`totes lake maintain`: vacuum and log cleanup,
#   within the time-travel retention): the bucket policy denies every delete to every other
#   principal, and no other role is allowed one;
# - the bucket is versioned, so what maintenance deletes (or a bug overwrites) stays
#   recoverable as a noncurrent version for `lake_noncurrent_version_days`, then expires.
#   No rule ever expires a current object: that would corrupt the Delta tables.
resource "aws_s3_bucket" "lake" {
  # checkov:skip=CKV2_AWS_62: nothing consumes object events: the processor reads Kinesis, the sync reads the Delta log
  # checkov:skip=CKV_AWS_18: only the task roles reach the bucket (IAM and the bucket policy); CloudTrail data events are the audit trail, not a second bucket
  # checkov:skip=CKV_AWS_144: the lake can be rebuilt from the source (slot and re-snapshot) and versioning keeps what maintenance deleted; replication would double its cost
  # checkov:skip=CKV_AWS_145: SSE-S3 (AES256): every role reads and writes without KMS grants, which a customer key would need for each
  bucket        = var.lake_bucket_name
  force_destroy = false
}

resource "aws_s3_bucket_versioning" "lake" {
  bucket = aws_s3_bucket.lake.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_public_access_block" "lake" {
  bucket                  = aws_s3_bucket.lake.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "lake" {
  bucket = aws_s3_bucket.lake.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Noncurrent versions (what maintenance deleted or an overwrite replaced) expire after
# `lake_noncurrent_version_days`; delete markers left with no version behind them go too;
# unfinished multipart uploads are aborted. No current object is ever expired.
resource "aws_s3_bucket_lifecycle_configuration" "lake" {
  bucket     = aws_s3_bucket.lake.id
  depends_on = [aws_s3_bucket_versioning.lake]

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.lake_noncurrent_version_days
    }
    expiration {
      expired_object_delete_marker = true
    }
  }

  rule {
    id     = "abort-incomplete-multipart-uploads"
    status = "Enabled"
    filter {}
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

# TLS only, and deletes only by the maintenance task's role.
data "aws_iam_policy_document" "lake_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"] # a Deny: covering every S3 action is the point
    resources = [
      aws_s3_bucket.lake.arn,
      "${aws_s3_bucket.lake.arn}/*",
    ]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  statement {
    sid       = "OnlyMaintenanceDeletes"
    effect    = "Deny"
    actions   = ["s3:DeleteObject*"] # a Deny: every delete action, versions and tags included
    resources = ["${aws_s3_bucket.lake.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.maintain.arn]
    }
  }
}

resource "aws_s3_bucket_policy" "lake" {
  bucket     = aws_s3_bucket.lake.id
  policy     = data.aws_iam_policy_document.lake_bucket.json
  depends_on = [aws_s3_bucket_public_access_block.lake]
}
