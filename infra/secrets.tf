# The two DSNs. Terraform creates the secrets empty; their values are set out of band (see
# README.md), so no password is ever in a variable, the state file or an output. The tasks
# get only the ARNs (TOTES_SOURCE_DSN_SECRET, TOTES_WAREHOUSE_SECRET) and read the values
# themselves when they start, so a DSN is never in a task's environment.
resource "aws_secretsmanager_secret" "source_dsn" {
  # checkov:skip=CKV_AWS_149: encrypted with the account's aws/secretsmanager key; only the reader's role may read it (iam.tf)
  # checkov:skip=CKV2_AWS_57: the DSN of an external database: rotate it there, then put-secret-value and restart the service (README)
  name                    = "${var.name}/source-dsn"
  description             = "libpq DSN of the source PostgreSQL (a role with REPLICATION), read by the reader through TOTES_SOURCE_DSN_SECRET"
  recovery_window_in_days = var.secret_recovery_window_days
}

# The key of the personal-data policy's keyed hashes (README "Personal data"), set out of band
# like the DSNs; the reader reads it through TOTES_PERSONAL_DATA_KEY_SECRET.
resource "aws_secretsmanager_secret" "personal_data_key" {
  # checkov:skip=CKV_AWS_149: encrypted with the account's aws/secretsmanager key; only the reader's role may read it (iam.tf)
  # checkov:skip=CKV2_AWS_57: rotating it changes every hash: equal values would no longer join across the change (README)
  name                    = "${var.name}/personal-data-key"
  description             = "Key of the personal-data policy's keyed hashes (at least 16 bytes), read by the reader through TOTES_PERSONAL_DATA_KEY_SECRET"
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret" "warehouse_dsn" {
  # checkov:skip=CKV_AWS_149: encrypted with the account's aws/secretsmanager key; only the sync's role may read it (iam.tf)
  # checkov:skip=CKV2_AWS_57: the DSN of an external database: rotate it there, then put-secret-value and restart the service (README)
  name                    = "${var.name}/warehouse-dsn"
  description             = "PostgreSQL DSN of the warehouse, read by the sync through TOTES_WAREHOUSE_SECRET"
  recovery_window_in_days = var.secret_recovery_window_days
}
