"""The change-event contract every stage shares: the event model and its wire format."""

import importlib

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
    "ChangeEvent", "CodecError", "Column", "DecodedRecord", "Op", "TableSchema", "Watermark",
    "decode", "encode_events", "encode_watermark", "format_lsn", "parse_lsn",
]


def __getattr__(name: str):
    """Load an exported name's module on first use."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
