"""Which source type changes need the table read again.

`ALTER TABLE … ALTER COLUMN … TYPE` rewrites the column's values in place, and logical
decoding carries none of that rewrite: the stream only shows a new Relation message before
the table's next change. When every value keeps its value (integer → bigint, a numeric
growing, a varchar getting longer) that is all the lake needs: it widens its column and the
old values stay right. Any other change may have changed values no later event will mention
(numeric(10,2) → numeric(10,1) rounds them, `USING` can compute anything, text → integer
turns '007' into 7), so the reader re-reads the table (a `lifecycle.Reread` of why
`TYPE_CHANGE`, kept in the state file until durable, rereads.py) and the re-read rows,
stamped after the change, put every row right.

The decision is the reader's: it alone sees both the old and the new Relation of a table,
and it alone can read the source. The lake decides only how to store the new type
(`lake.arrow_types.common_type`), and never refuses it.
"""

from __future__ import annotations

import re


_INTEGER_DIGITS = {"smallint": 5, "integer": 10, "bigint": 19}
_INTEGER_ORDER = ["smallint", "integer", "bigint"]
_MODIFIER = re.compile(r"\(([\d,\s]*)\)")
_TEXT = {"text", "character varying"}
_TIMESTAMP_DEFAULT_PRECISION = 6


def _parse(type_name: str) -> tuple[str, tuple[int, ...]]:
    """'numeric(10,2)' → ('numeric', (10, 2)); 'timestamp(3) without time zone' →
    ('timestamp without time zone', (3,))."""
    name = type_name.strip()
    match = _MODIFIER.search(name)
    if match is None:
        return name, ()
    args = tuple(int(a) for a in match[1].replace(" ", "").split(",") if a)
    return re.sub(r"\s+", " ", (name[: match.start()] + name[match.end() :])).strip(), args


def preserves_values(old: str, new: str) -> bool:
    """Does changing a column from type `old` to `new` (format_type() names) keep every
    value as it was? Only changes known to do so count; anything else is a rewrite."""
    if old == new:
        return True
    (old_base, old_args), (new_base, new_args) = _parse(old), _parse(new)
    if old_base in _INTEGER_ORDER:
        if new_base in _INTEGER_ORDER:
            return _INTEGER_ORDER.index(new_base) >= _INTEGER_ORDER.index(old_base)
        if new_base == "numeric":
            return not new_args or new_args[0] - (new_args[1] if len(new_args) > 1 else 0) >= _INTEGER_DIGITS[old_base]
        return False
    if old_base == "numeric" and new_base == "numeric":
        if not new_args:
            return True
        if not old_args:
            return False
        old_scale, new_scale = (old_args[1:] or (0,))[0], (new_args[1:] or (0,))[0]
        return new_scale >= old_scale and new_args[0] - new_scale >= old_args[0] - old_scale
    if old_base in _TEXT and new_base in _TEXT:
        if new_base == "text" or not new_args:
            return True
        return old_base == "character varying" and bool(old_args) and new_args[0] >= old_args[0]
    if old_base == "real" and new_base == "double precision":
        return True
    if old_base == new_base and old_base.startswith(("timestamp", "time ")):
        old_precision = old_args[0] if old_args else _TIMESTAMP_DEFAULT_PRECISION
        new_precision = new_args[0] if new_args else _TIMESTAMP_DEFAULT_PRECISION
        return new_precision >= old_precision
    return False


def rewritten_columns(old: dict[str, str], new: dict[str, str]) -> dict[str, tuple[str, str]]:
    """Columns of both (column → type name) whose type changed in a way that may have
    changed values: name → (old type, new type). Added and dropped columns change no
    existing value."""
    return {
        name: (old[name], type_)
        for name, type_ in new.items()
        if name in old and not preserves_values(old[name], type_)
    }
