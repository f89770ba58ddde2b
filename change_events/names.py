"""The names the stages meet by: the stream, the replication slot, the publication, the source
schema, the metrics' namespace. Defined here once, below every stage: the reader's and the
doctor's defaults (cdc_reader/) and the composition root (totes_cli/bootstrap.py, which every
command's flags and settings take them from) read these same constants."""

STREAM = "totes-cdc"
"""The Kinesis stream of every command (`--stream`, TOTES_STREAM)."""
SLOT_PREFIX = "totes"
"""Replication slots whose name starts with this belong to totes-cdc pipelines (`totes doctor`
looks at them)."""
SLOT = f"{SLOT_PREFIX}_cdc"
"""The slot for a lake on S3 or no lake; a local lake names its own, the same for `totes run`
and `totes reader` (`totes_cli.bootstrap.remembered_slot`)."""
PUBLICATION = "totes_cdc"
SCHEMA = "public"
"""The schema of the source tables."""
METRICS_NAMESPACE = "totes-cdc"
"""The CloudWatch namespace of every stage's metrics (the alarms in infra/alarms.tf watch it)."""
