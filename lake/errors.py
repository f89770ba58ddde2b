"""Why the lake refuses events. Each of these concerns some events only: the writer stores
everything else of the batch and hands the refused events back, so the caller can put them in
the dead letters (with `str(error)` as the reason) and keep its shard flowing."""

from __future__ import annotations

from change_events.errors import Kind, TotesError


class LakeError(TotesError):
    """Base class of the lake's own errors: the events' trouble, never retried."""

    kind = Kind.BAD_DATA


class UnapplicableEventsError(LakeError):
    """Some events cannot be stored in the lake as they are."""


class IncompatibleSchemaError(UnapplicableEventsError):
    """A source schema the lake cannot store: a column named like one of the lake's own
    (`lake.schemas.RESERVED`). Changed column types are not refused: the lake column widens
    to a type that holds both (`lake.schemas`)."""

    def __init__(self, table: str, changes: dict[str, tuple[str, str]]):
        self.table = table
        self.changes = changes
        details = ", ".join(f"{column}: lake {old} vs source {new}" for column, (old, new) in sorted(changes.items()))
        super().__init__(f"{table}: incompatible column type change ({details})")


class ValueConversionError(UnapplicableEventsError):
    """Some values of a column do not fit the column's lake type (e.g. an 'infinity'
    timestamp, a NaN numeric(10,2)). `rows` are the positions of the bad values in the
    column that was being converted."""

    def __init__(self, column: str, type_name: str, value: str | None, rows: list[int]):
        self.column = column
        self.type_name = type_name
        self.value = value
        self.rows = rows
        shown = value if value is None or len(value) <= 80 else value[:80] + "..."
        super().__init__(
            f"column {column} ({type_name}): value {shown!r} does not convert "
            f"({len(rows)} bad value{'s' if len(rows) != 1 else ''})"
        )


class UnstorableSchemaError(UnapplicableEventsError):
    """A source schema no lake table can hold (a type without a lake type, clashing names)."""

    def __init__(self, table: str, reason: str):
        self.table = table
        super().__init__(f"{table}: schema cannot be stored: {reason}")


class RefusedEventsError(UnapplicableEventsError):
    """The lake refused to store these events for a reason of their own (not an outage,
    which is retried): the original error, shortened, is the reason."""

    def __init__(self, table: str, error: BaseException):
        self.table = table
        self.cause = error
        text = " ".join(str(error).split())
        shown = text if len(text) <= 300 else text[:300] + "..."
        super().__init__(f"{table}: the lake refused these events: {type(error).__name__}: {shown}")
