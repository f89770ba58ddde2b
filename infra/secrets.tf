# The two DSNs. Terraform creates the secrets empty; their values are set out of band (see
# README.md), so no password is ever in a variable, the state file or an output. ECS injects
# them into the tasks as the environment variables the CLI reads.
resource "aws_secretsmanager_secret" "source_dsn" {
  name                    = "${var.name}/source-dsn"
  description             = "TOTES_SOURCE_DSN: libpq DSN of the source PostgreSQL (a role with REPLICATION)"
  recovery_window_in_days = var.secret_recovery_window_days
}

resource "aws_secretsmanager_secret" "warehouse_dsn" {
  name                    = "${var.name}/warehouse-dsn"
  description             = "TOTES_WAREHOUSE: PostgreSQL DSN of the warehouse"
  recovery_window_in_days = var.secret_recovery_window_days
}
