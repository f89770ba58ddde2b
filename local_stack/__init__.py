"""local_stack: local stand-ins for the AWS services totes-cdc uses, run as child processes.

Today that is kinesalite, the local Kinesis endpoint (durable on disk, loss-free).
"""

from local_stack.kinesalite import Kinesalite, KinesaliteError, KinesaliteNotInstalled, find_kinesalite

__all__ = ["Kinesalite", "KinesaliteError", "KinesaliteNotInstalled", "find_kinesalite"]
