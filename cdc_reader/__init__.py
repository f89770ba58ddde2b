"""cdc_reader: turns the source's write-ahead log into the change-event stream.

Owns the publication and replication slot, the consistent initial snapshot, pgoutput
decoding, batching into Kinesis, LSN checkpointing and heartbeats, and the readiness checks
(`totes doctor`) a source must pass before any of that can work.
"""
