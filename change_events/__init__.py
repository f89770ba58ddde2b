"""The change-event contract every stage shares: the event model and its wire format."""

from change_events.lazy import lazy_exports

# Imported on first use (PEP 562): the command line loads only what a command needs; the
# model needs no pyarrow, the codec does.
_EXPORTS = {
    "CodecError": "change_events.codec",
    "DecodedRecord": "change_events.codec",
    "decode": "change_events.codec",
    "encode_events": "change_events.codec",
    "encode_watermark": "change_events.codec",
    "ChangeEvent": "change_events.model",
    "Column": "change_events.model",
    "Op": "change_events.model",
    "TableSchema": "change_events.model",
    "Watermark": "change_events.model",
    "format_lsn": "change_events.model",
    "parse_lsn": "change_events.model",
}

__all__ = [
    "ChangeEvent",
    "CodecError",
    "Column",
    "DecodedRecord",
    "Op",
    "TableSchema",
    "Watermark",
    "decode",
    "encode_events",
    "encode_watermark",
    "format_lsn",
    "parse_lsn",
]


__getattr__ = lazy_exports(__name__, _EXPORTS, globals())
