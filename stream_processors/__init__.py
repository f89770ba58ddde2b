"""stream_processors: Lambda handlers that decode Kinesis batches and write the lake."""
