# Settings of the S3 state backend shared by every deployment; the bucket (and region) are
# given per deployment: terraform init -backend-config=backend.hcl -backend-config="bucket=…"
# -backend-config="region=…". infra/bootstrap creates that bucket.
key          = "totes-cdc/terraform.tfstate"
encrypt      = true
use_lockfile = true # S3-native locking (Terraform >= 1.10): a .tflock object beside the state
