"""The change-event contract every stage shares: the event model and its wire format."""

from change_events.codec import CodecError, DecodedRecord, decode, encode_events, encode_watermark
from change_events.model import ChangeEvent, Column, Op, TableSchema, Watermark, format_lsn, parse_lsn

__all__ = [
    "ChangeEvent", "CodecError", "Column", "DecodedRecord", "Op", "TableSchema", "Watermark",
    "decode", "encode_events", "encode_watermark", "format_lsn", "parse_lsn",
]
