"""Personal data by policy: what of a source column may leave the reader.

A policy gives some columns (`schema.table.column`, or `table.column` in the default
schema) one rule each; every other column is kept as it is:

- `keep`: the value as it is (also the way to switch a default rule off);
- `drop`: the column never leaves the reader. The publication's column list keeps it out of
  the WAL where the server has those (PostgreSQL 15+); the reader removes it otherwise, and
  snapshots and re-reads never select it;
- `mask`: a shape to read, not the value. `mask:email` keeps the domain (`***@example.com`);
  `mask:lastN` keeps the last N characters (`*** 3456`, and `***` for a value of N or fewer);
  plain `mask` is `mask:email` for a value with an '@' and `mask:last4` for any other;
- `hash`: the keyed HMAC-SHA256 of the value (64 hex digits), so equal values stay equal and
  still join, while nobody without the key can test a guess.

NULL stays NULL and an unchanged TOASTed value stays unchanged. Key columns cannot have a
rule: they are a row's identity downstream (and what `totes lake forget` names).

Pure: parse and validate (`parse`, `Policy.check`), and apply to one value, to a row of
values, to a pgoutput row in its wire bytes and to an Arrow column (`RowRewrite`). The two
forms give the same text for every value; a test holds them to that.
"""

from __future__ import annotations

import hmac
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from change_events import TableSchema
from change_events.errors import Kind, TotesError
from change_events.wire import decode_row, encode_row

KEEP, DROP, MASK, HASH = "keep", "drop", "mask", "hash"
TOTESYS_DEFAULTS: dict[str, str] = {"public.staff.email_address": HASH, "public.address.phone": HASH}
"""totesys's personal data: staff e-mail addresses and the addresses' phone numbers (the
counterparties' phone numbers in the warehouse are their legal address's)."""
TEXT_TYPES = ("text", "character varying", "character", "varchar", "char", "citext", "bpchar")
"""Column types a mask or a hash may rewrite: its output is text."""
HIDDEN = "***"
_MASK_LAST = re.compile(r"mask:last(\d{1,2})")
_I16, _I32, _VALUE_HEAD = struct.Struct(">h"), struct.Struct(">i"), struct.Struct(">ci")


class PolicyError(TotesError, ValueError):
    """A policy that cannot be used; str() is one sentence naming the fix."""

    kind = Kind.CONFIGURATION


@dataclass(frozen=True)
class Rule:
    action: str
    """drop, mask or hash (a `keep` is no rule)"""
    mask: str = ""
    """'email', 'lastN' or '' (plain mask)"""


def parse_rule(column: str, text: object) -> Rule | None:
    """The rule a policy value names (None for keep)."""
    value = text.strip().lower() if isinstance(text, str) else text
    if value == KEEP:
        return None
    if value in (DROP, HASH, MASK):
        return Rule(value)
    if value == "mask:email":
        return Rule(MASK, "email")
    match = _MASK_LAST.fullmatch(value) if isinstance(value, str) else None
    if match and 0 < int(match.group(1)):
        return Rule(MASK, f"last{int(match.group(1))}")
    raise PolicyError(
        f"The personal-data policy of {column} is {text!r}, which is no policy",
        fix="write keep, drop, hash, mask, mask:email or mask:lastN (N from 1 to 99).",
    )


def _qualified(column: str, default_schema: str) -> str:
    parts = column.split(".")
    if len(parts) == 2:
        parts.insert(0, default_schema)
    if len(parts) != 3 or not all(parts):
        raise PolicyError(
            f"The personal-data policy names {column!r}, which is no column",
            fix="write table.column or schema.table.column.",
        )
    return ".".join(parts)


@dataclass(frozen=True)
class Policy:
    """Rules by qualified table, then column. `key` is the HMAC key (never shown)."""

    rules: Mapping[str, Mapping[str, Rule]]
    key: bytes | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        shown = {
            f"{t}.{c}": r.action + (f":{r.mask}" if r.mask else "")
            for t, columns in self.rules.items()
            for c, r in columns.items()
        }
        return f"Policy({shown})"

    @property
    def hashes(self) -> bool:
        return any(r.action == HASH for columns in self.rules.values() for r in columns.values())

    def dropped(self, table: str) -> frozenset[str]:
        return frozenset(c for c, r in self.rules.get(table, {}).items() if r.action == DROP)

    def check(self, schema: TableSchema, *, complete: bool = True) -> None:
        """PolicyError when a rule names a column `schema` lacks, a key column, or a column a
        mask or hash cannot rewrite (not text). `complete=False`: `schema` may lack dropped
        columns (a Relation message under a publication's column list)."""
        columns = {c.name: c for c in schema.columns}
        for name, rule in self.rules.get(schema.table, {}).items():
            column = columns.get(name)
            if column is None and not complete and rule.action == DROP:
                continue
            if column is None:
                raise PolicyError(
                    f"The personal-data policy names {schema.table}.{name}, which {schema.table} does not have",
                    fix=f"fix the name or remove it (its columns: {', '.join(columns)}).",
                )
            if column.is_key:
                raise PolicyError(
                    f"The personal-data policy gives {schema.table}.{name} the rule {rule.action}, but it "
                    "is part of the table's key, which leaves the reader as it is",
                    fix="remove that rule.",
                )
            if rule.action != DROP and column.type_name.split("(")[0].strip() not in TEXT_TYPES:
                raise PolicyError(
                    f"The personal-data policy would {rule.action} {schema.table}.{name}, a "
                    f"{column.type_name} column, into text",
                    fix="give it drop or keep instead.",
                )

    def rewrite(self, schema: TableSchema) -> RowRewrite | None:
        """How rows of `schema` (in its column order) leave the reader, or None when they
        leave as they are."""
        rules = self.rules.get(schema.table)
        if not rules:
            return None
        self.check(schema, complete=False)
        if not any(c in rules for c in schema.column_names):
            return None
        if self.key is None and any(r.action == HASH for r in rules.values()):
            raise PolicyError(
                f"The personal-data policy hashes columns of {schema.table} but no key is set",
                fix="set TOTES_PERSONAL_DATA_KEY, TOTES_PERSONAL_DATA_KEY_FILE or TOTES_PERSONAL_DATA_KEY_SECRET.",
            )
        kept = tuple(i for i, c in enumerate(schema.columns) if rules.get(c.name, Rule(KEEP)).action != DROP)
        changes = {
            schema.columns[i].name: value_function(rules[schema.columns[i].name], self.key)
            for i in kept
            if schema.columns[i].name in rules
        }
        visible = TableSchema(schema.table, tuple(schema.columns[i] for i in kept))
        return RowRewrite(
            visible,
            kept,
            tuple((kept.index(schema.column_names.index(n)), f) for n, f in changes.items()),
            {n: arrow_function(rules[n], self.key) for n in changes},
            len(schema.columns),
        )

    def visible(self, schema: TableSchema) -> TableSchema:
        """`schema` without its dropped columns."""
        rewrite = self.rewrite(schema)
        return schema if rewrite is None else rewrite.schema

    def apply(self, table: str, row: Mapping[str, str | None]) -> dict[str, str | None]:
        """A row (column → text) as it leaves the reader: dropped columns absent."""
        rules = self.rules.get(table, {})
        out = {}
        for name, value in row.items():
            rule = rules.get(name)
            if rule is None:
                out[name] = value
            elif rule.action != DROP:
                out[name] = value_function(rule, self.key)(value)
        return out


def parse(
    mapping: Mapping[str, object],
    key: bytes | None = None,
    *,
    default_schema: str = "public",
    defaults: Mapping[str, str] = TOTESYS_DEFAULTS,
) -> Policy:
    """The policy of `defaults` overridden by `mapping` (column → rule name)."""
    merged: dict[str, object] = dict(defaults)
    for column, value in mapping.items():
        merged[_qualified(str(column), default_schema)] = value
    rules: dict[str, dict[str, Rule]] = {}
    for column, value in merged.items():
        rule = parse_rule(column, value)
        if rule is not None:
            table, _, name = column.rpartition(".")
            rules.setdefault(table, {})[name] = rule
    if key is not None and not key:
        raise PolicyError("The personal-data key is empty", fix="give it at least 16 bytes.")
    return Policy(rules, key)


NO_POLICY = Policy({})


# -- one value ------------------------------------------------------------------------------


def keyed_hash(key: bytes, value: str) -> str:
    return hmac.digest(key, value.encode("utf-8"), "sha256").hex()  # one-shot C HMAC: no object per value


def mask_email(value: str) -> str:
    at = value.find("@")
    return HIDDEN if at < 0 else HIDDEN + value[at:]


def mask_last(value: str, keep: int) -> str:
    return HIDDEN + value[-keep:] if len(value) > keep else HIDDEN


def _masker(rule: Rule) -> Callable[[str], str]:
    if rule.mask == "email":
        return mask_email
    if rule.mask.startswith("last"):
        keep = int(rule.mask[4:])
        return lambda value: mask_last(value, keep)
    return lambda value: mask_email(value) if "@" in value else mask_last(value, 4)


def value_function(rule: Rule, key: bytes | None) -> Callable:
    """text → text for a mask or a hash; None and any non-text marker (unchanged) pass."""
    if rule.action == HASH:
        assert key is not None  # nosec B101 # Policy.rewrite refuses a hash without a key
        inner: Callable[[str], str] = lambda value: keyed_hash(key, value)  # noqa: E731
    else:
        inner = _masker(rule)
    return lambda value: inner(value) if isinstance(value, str) else value


# -- an Arrow column ------------------------------------------------------------------------


def arrow_function(rule: Rule, key: bytes | None) -> Callable:
    """pa.Array of strings → pa.Array of strings, as `value_function` does to each value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    def hashed(column):
        # Each distinct value is hashed once (a column repeats values often), then spread
        # back by the dictionary indices; nulls stay null.
        encoded = pc.dictionary_encode(column)
        digests = pa.array([keyed_hash(key, v) for v in encoded.dictionary.to_pylist()], pa.string())
        return pc.take(digests, encoded.indices)

    def email(column):
        return pc.replace_substring_regex(column, pattern="^[^@]*", replacement=HIDDEN, max_replacements=1)

    def last(column, keep: int):
        tail = pc.binary_join_element_wise(HIDDEN, pc.utf8_slice_codeunits(column, start=-keep), "")
        return pc.if_else(pc.greater(pc.utf8_length(column), keep), tail, pa.scalar(HIDDEN))

    def plain(column):
        return pc.if_else(pc.match_substring(column, "@"), email(column), last(column, 4))

    if rule.action == HASH:
        return hashed
    if rule.mask == "email":
        return email
    if rule.mask.startswith("last"):
        keep = int(rule.mask[4:])
        return lambda column: last(column, keep)
    return plain


# -- rows -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RowRewrite:
    """One table's rows as they leave the reader: `schema` without the dropped columns,
    `kept` the source column positions that stay, `changes` (position among the kept ones,
    value function) and `arrow` (column name → Arrow function) for the masked and hashed."""

    schema: TableSchema
    kept: tuple[int, ...]
    changes: tuple[tuple[int, Callable], ...]
    arrow: Mapping[str, Callable]
    width: int
    """columns of the source row"""

    def values(self, values: list) -> list:
        """A row of values in source column order (text, None or a marker) as it leaves."""
        out = [values[i] for i in self.kept] if len(self.kept) != self.width else list(values)
        for position, function in self.changes:
            out[position] = function(out[position])
        return out

    def tuple_data(self, values: list) -> list:
        """pgoutput TupleData ((kind, bytes) per column) as it leaves."""
        out = [values[i] for i in self.kept] if len(self.kept) != self.width else list(values)
        for position, function in self.changes:
            kind, data = out[position]
            if data is not None:
                out[position] = (kind, function(data.decode("utf-8")).encode("utf-8"))
        return out

    def __post_init__(self) -> None:
        actions = {self.kept[position]: function for position, function in self.changes}
        actions |= {i: None for i in range(self.width) if i not in set(self.kept)}
        object.__setattr__(self, "_wire", tuple(sorted(actions.items())))

    def row_bytes(self, buf: bytes, pos: int) -> bytes:
        """The wire row (pgoutput's TupleData layout) at `pos`, to the end of `buf`, as it
        leaves. Only the columns up to the last one with a rule are walked, and only theirs
        decoded: the bytes between them are copied as they are (this is the streaming path)."""
        count = _I16.unpack_from(buf, pos)[0]
        if count != self.width:
            values, _ = decode_row(buf, pos)  # a row of another width: let decode say what is wrong
            return encode_row(self.values(values))
        parts = [_I16.pack(len(self.kept))]
        copied = pos = pos + 2
        column = 0
        for target, function in self._wire:
            while column < target:  # skip to the target column
                pos = pos + 5 + _I32.unpack_from(buf, pos + 1)[0] if buf[pos] == 0x74 else pos + 1
                column += 1
            end = pos + 5 + _I32.unpack_from(buf, pos + 1)[0] if buf[pos] == 0x74 else pos + 1
            parts.append(buf[copied:pos])
            if function is not None:
                if buf[pos] == 0x74:
                    data = function(buf[pos + 5 : end].decode("utf-8")).encode("utf-8")
                    parts.append(_VALUE_HEAD.pack(b"t", len(data)))
                    parts.append(data)
                else:  # NULL or unchanged: as it is
                    parts.append(buf[pos:end])
            copied = pos = end
            column += 1
        parts.append(buf[copied:])
        return b"".join(parts)

    def table(self, table):
        """A pa.Table or pa.RecordBatch (all of the source's columns, or the kept ones) as it
        leaves: its masked and hashed columns are text."""
        import pyarrow as pa

        extra = [name for name in table.column_names if name not in self.schema.column_names]
        if extra:
            table = table.drop_columns(extra)
        for name, function in self.arrow.items():
            index = table.column_names.index(name)
            column = table.column(index)
            if isinstance(column, pa.ChunkedArray):
                column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
            table = table.set_column(index, name, function(column))
        return table
