"""The warehouse's tables against §3 of the spec, on DuckDB and PostgreSQL, and the pure
pieces of the sync (replay of versions, fact versioning, dimensions, calendar)."""

from __future__ import annotations

from datetime import date, datetime, time, timezone
from decimal import Decimal

import duckdb
import polars as pl
import pytest

from warehouse_sync import DuckDBTarget, dangling_references, ensure_schema, open_target
from warehouse_sync.checks import MissingReference, require_references
from warehouse_sync import transforms as tf
from warehouse_sync.lake_source import event_schema
from warehouse_sync.replay import replay
from warehouse_sync.schema import BY_NAME, SOURCES

DUCKDB_TYPES = {
    "int": "INTEGER",
    "serial": "INTEGER",
    "bigint": "BIGINT",
    "varchar": "VARCHAR",
    "date": "DATE",
    "time": "TIME",
    "boolean": "BOOLEAN",
    "numeric(10,2)": "DECIMAL(10,2)",
    "numeric": "DECIMAL(18,2)",
    "timestamptz": "TIMESTAMP WITH TIME ZONE",
}


def test_duckdb_tables_match_the_spec_column_by_column(tmp_path, warehouse_spec):
    target = open_target(tmp_path / "warehouse.duckdb")  # a path opens a DuckDB file
    assert isinstance(target, DuckDBTarget)
    ensure_schema(target)
    ensure_schema(target)  # idempotent
    con = target.connection
    for table, spec in warehouse_spec.tables.items():
        columns = con.sql(
            "SELECT column_name, data_type, is_nullable, column_default FROM information_schema.columns "
            f"WHERE table_name = '{table}' ORDER BY ordinal_position"
        ).fetchall()
        expected = [(n, DUCKDB_TYPES[t], "YES" if null else "NO") for n, t, null in spec]
        assert [c[:3] for c in columns] == expected, table
        for (name, type_, _), column in zip(spec, columns):
            assert ("nextval(" in (column[3] or "")) == (type_ == "serial"), (table, name)
        constraints = con.sql(
            "SELECT constraint_type, constraint_column_names, referenced_table "
            f"FROM duckdb_constraints() WHERE table_name = '{table}'"
        ).fetchall()
        assert ("PRIMARY KEY", [warehouse_spec.primary_keys[table]], None) in constraints
        # no foreign keys in DuckDB: the sync checks them itself (`ddl`, `checks.require_references`)
        assert [c for c in constraints if c[0] == "FOREIGN KEY"] == [], table
    target.close()


def _one_row(table, **values) -> pl.DataFrame:
    """A row of `table` whose every column holds a plain value of its type (1 for the keys)."""
    plain = {pl.Date: date(2024, 5, 1), pl.Time: time(9), pl.Boolean: True, pl.String: "x"}  # else 1
    row = {name: values.get(name, plain.get(dtype, 1)) for name, dtype in table.polars_schema.items()}
    return pl.DataFrame([row], schema=table.polars_schema)


def test_duckdb_refuses_new_fact_rows_of_a_missing_dimension_row_as_a_foreign_key_would():
    """DuckDB declares no foreign keys (`ddl`): `require_references` is what refuses a fact row
    whose dimension row is not there, among the rows after `after` only, naming key and table."""
    fact = BY_NAME["fact_payment"]
    with DuckDBTarget() as target:
        ensure_schema(target)

        def insert(frame: pl.DataFrame, table) -> None:
            staged = target.stage("_rows", frame)
            target.execute(f"INSERT INTO {table.name} SELECT * FROM {staged}")

        for dimension in {BY_NAME[column.references] for column in fact.foreign_keys}:
            insert(_one_row(dimension), dimension)  # date_id 2024-05-01, every other key 1
        insert(_one_row(fact, payment_record_id=1), fact)
        require_references(target, fact, after=0)
        insert(_one_row(fact, payment_record_id=2, counterparty_id=7), fact)
        require_references(target, fact, after=2)  # row 2 is not among the rows asked about
        with pytest.raises(MissingReference, match='key "counterparty_id: 7" does not exist') as refused:
            require_references(target, fact, after=1)
        assert "dim_counterparty" in str(refused.value) and isinstance(refused.value, duckdb.ConstraintException)
        assert dangling_references(target) == {"fact_payment.counterparty_id": 1}


# -- pure pieces ------------------------------------------------------------------------------

UTC = timezone.utc


def _events(source: str, rows: list[dict]) -> pl.DataFrame:
    schema = event_schema(source)
    full = [{name: row.get(name) for name in schema} for row in rows]
    return pl.DataFrame(full, schema=schema, orient="row")


def _prior(source: str, rows: list[dict]) -> pl.DataFrame:
    schema = SOURCES[source].polars_schema
    return pl.DataFrame([{n: r.get(n) for n in schema} for r in rows], schema=schema, orient="row")


def test_replay_fills_unchanged_toast_columns_carries_deletes_and_expands_truncates():
    prior = _prior(
        "design",
        [
            {"design_id": 1, "design_name": "A", "file_location": "/a", "file_name": "a.json", "_lsn": 1, "_seq": 0},
            {"design_id": 2, "design_name": "B", "file_location": "/b", "file_name": "b.json", "_lsn": 1, "_seq": 1},
        ],
    )
    ts = datetime(2024, 11, 18, 9, tzinfo=UTC)
    events = _events(
        "design",
        [
            {
                "design_id": 1,
                "design_name": "A2",
                "_unchanged": ["file_location", "file_name"],
                "_op": "u",
                "_lsn": 10,
                "_seq": 0,
                "_commit_ts": ts,
            },
            {
                "design_id": 1,
                "design_name": "A3",
                "file_location": None,
                "_unchanged": ["file_name"],
                "_op": "u",
                "_lsn": 11,
                "_seq": 0,
                "_commit_ts": ts,
            },
            {"design_id": 2, "_op": "d", "_lsn": 12, "_seq": 0, "_commit_ts": ts},
            {
                "design_id": 3,
                "design_name": "C",
                "file_location": "/c",
                "file_name": "c.json",
                "_op": "c",
                "_lsn": 13,
                "_seq": 0,
                "_commit_ts": ts,
            },
            {"_op": "t", "_lsn": 14, "_seq": 0, "_commit_ts": ts},
            {
                "design_id": 4,
                "design_name": "D",
                "file_location": "/d",
                "file_name": "d.json",
                "_op": "c",
                "_lsn": 15,
                "_seq": 0,
                "_commit_ts": ts,
            },
            {"design_id": 9, "_op": "d", "_lsn": 16, "_seq": 0, "_commit_ts": ts},
        ],
    )
    result = replay("design", prior, events)
    rows = result.versions.select("design_id", "design_name", "file_location", "file_name", "_op", "_lsn", "_known")
    assert rows.rows() == [
        (1, "A2", "/a", "a.json", "u", 10, True),
        (1, "A3", None, "a.json", "u", 11, True),  # a real NULL stays NULL
        (1, "A3", None, "a.json", "t", 14, True),
        (2, "B", "/b", "b.json", "d", 12, True),  # the delete carries the last values
        (3, "C", "/c", "c.json", "c", 13, False),  # nothing before an insert
        (3, "C", "/c", "c.json", "t", 14, True),  # truncated with what was alive
        (4, "D", "/d", "d.json", "c", 15, False),
        (9, None, None, None, "d", 16, False),  # a delete of a row never seen
    ]
    assert result.upserts.select("design_id", "_lsn").rows() == [(4, 15)]
    assert sorted(result.deleted.to_list()) == [1, 2, 3, 9]
    assert sorted(result.gone["design_id"].to_list()) == [1, 2, 3]


def test_replay_of_complete_rows_beside_carried_ones_equals_carrying_every_column(monkeypatch):
    """Keys whose events are all complete rows skip the carrying forward; mixed with keys that
    need it (deletes, unchanged TOAST), the result is what carrying every column gives."""
    import random

    import warehouse_sync.replay as replay_module

    rng = random.Random(7)
    ts = datetime(2024, 11, 18, 9, tzinfo=UTC)
    prior = _prior(
        "design",
        [
            {
                "design_id": k,
                "design_name": f"p{k}",
                "file_location": f"/p{k}",
                "file_name": f"p{k}.json",
                "_lsn": 1,
                "_seq": k,
            }
            for k in range(0, 40, 2)
        ],
    )
    rows = []
    for lsn in range(10, 70):
        for seq in range(3):
            key, kind = rng.randrange(40), rng.random()
            if kind < 0.1:
                rows.append({"design_id": key, "_op": "d", "_lsn": lsn, "_seq": seq, "_commit_ts": ts})
            else:
                unchanged = ["file_name"] if kind < 0.2 else []
                rows.append(
                    {
                        "design_id": key,
                        "design_name": f"n{lsn}.{seq}",
                        "file_location": f"/{lsn}",
                        "file_name": None if unchanged else f"{lsn}.json",
                        "_unchanged": unchanged,
                        "_op": "u" if kind < 0.7 else "c",
                        "_lsn": lsn,
                        "_seq": seq,
                        "_commit_ts": ts,
                    }
                )
    events = _events("design", rows)
    assert events.filter((pl.col("_op") == "d") | (pl.col("_unchanged").list.len() > 0))["design_id"].n_unique() < 40

    def carrying_everything(state, events_, key, columns, schema):
        if events_.height == 0:
            return state, pl.DataFrame(schema=schema)
        return replay_module._filled_segment(state, events_, key, columns, schema)

    fast = replay("design", prior, events)
    monkeypatch.setattr(replay_module, "_segment", carrying_everything)
    reference = replay("design", prior, events)
    assert fast.versions.equals(reference.versions)
    assert fast.upserts.equals(reference.upserts)
    assert fast.deleted.sort().equals(reference.deleted.sort())
    assert fast.gone.sort("design_id").equals(reference.gone.sort("design_id"))


def test_replay_of_a_key_change_deletes_the_old_key():
    prior = _prior("currency", [{"currency_id": 1, "currency_code": "GBP", "_lsn": 1, "_seq": 0}])
    events = _events(
        "currency",
        [
            {
                "currency_id": 5,
                "currency_code": "GBP",
                "_op": "u",
                "_lsn": 2,
                "_seq": 0,
                "_before": '{"currency_id":"1"}',
            }
        ],
    )
    result = replay("currency", prior, events)
    assert result.deleted.to_list() == [1]
    assert result.upserts.select("currency_id", "currency_code").rows() == [(5, "GBP")]


def _sales_versions(rows: list[dict]) -> pl.DataFrame:
    base = {
        "created_at": datetime(2024, 11, 18, 9, 0, 0, 123000),
        "last_updated": datetime(2024, 11, 18, 9, 0, 0, 123000),
        "design_id": 1,
        "staff_id": 1,
        "counterparty_id": 1,
        "units_sold": 100,
        "unit_price": Decimal("2.50"),
        "currency_id": 1,
        "agreed_delivery_date": "2024-11-25",
        "agreed_payment_date": "2024-11-22",
        "agreed_delivery_location_id": 1,
        "_known": True,
    }
    schema = {n: t for n, t in event_schema("sales_order").items() if n not in ("_unchanged", "_before")}
    schema["_known"] = pl.Boolean()
    return pl.DataFrame([{**base, **r} for r in rows], schema=schema, orient="row")


def test_fact_versions_append_only_projected_changes_and_chain_validity():
    spec = tf.FACT_BY_SOURCE["sales_order"]
    t = [datetime(2024, 11, 18, h, tzinfo=UTC) for h in range(9, 16)]
    versions = _sales_versions(
        [
            {"sales_order_id": 1, "_op": "c", "_lsn": 10, "_seq": 0, "_commit_ts": t[0]},
            {"sales_order_id": 1, "_op": "u", "_lsn": 11, "_seq": 0, "_commit_ts": t[1]},  # nothing projected changed
            {"sales_order_id": 1, "units_sold": 7, "_op": "u", "_lsn": 12, "_seq": 0, "_commit_ts": t[2]},
            {"sales_order_id": 1, "units_sold": 7, "_op": "d", "_lsn": 13, "_seq": 0, "_commit_ts": t[3]},
            {"sales_order_id": 1, "units_sold": 7, "_op": "d", "_lsn": 13, "_seq": 1, "_commit_ts": t[3]},
            {"sales_order_id": 1, "units_sold": 7, "_op": "c", "_lsn": 14, "_seq": 0, "_commit_ts": t[4]},
            {"sales_order_id": 2, "_op": "d", "_lsn": 14, "_seq": 1, "_commit_ts": t[4], "_known": False},
        ]
    )
    rows = tf.fact_rows(spec, versions)
    changes = tf.new_fact_rows(spec, pl.DataFrame(schema={"sales_record_id": pl.Int32, **tf.fact_schema(spec)}), rows)
    got = changes.inserts.select(
        "sales_order_id", "units_sold", "is_deleted", "is_current", "source_lsn", "valid_from", "valid_to"
    ).rows()
    assert got == [
        (1, 100, False, False, 10, t[0], t[2]),
        (1, 7, False, False, 12, t[2], t[3]),
        (1, 7, True, False, 13, t[3], t[4]),
        (1, 7, False, True, 14, t[4], None),
    ]
    first = changes.inserts.row(0, named=True)
    assert (first["created_date"], first["created_time"]) == (date(2024, 11, 18), time(9, 0, 0, 123000))
    assert first["agreed_payment_date"] == date(2024, 11, 22)

    # the same key later: the current row is closed only when something changed
    current = changes.inserts.tail(1).with_columns(pl.lit(4, pl.Int32).alias("sales_record_id"))
    replayed = tf.fact_rows(spec, versions.tail(2).head(1).with_columns(_lsn=pl.lit(20, pl.Int64)))
    assert tf.new_fact_rows(spec, current, replayed).inserts.height == 0
    changed = tf.fact_rows(
        spec,
        _sales_versions(
            [{"sales_order_id": 1, "units_sold": 8, "_op": "u", "_lsn": 21, "_seq": 0, "_commit_ts": t[6]}]
        ),
    )
    closing = tf.new_fact_rows(spec, current, changed)
    assert closing.closes.rows() == [(4, t[6])]
    assert closing.inserts.select("units_sold", "is_current").rows() == [(8, True)]


def test_dimensions_and_calendar_follow_the_spec():
    staff = pl.DataFrame(
        {
            "staff_id": [1, 2],
            "first_name": ["A", "B"],
            "last_name": ["X", "Y"],
            "department_id": [1, 9],
            "email_address": ["a@t", "b@t"],
        }
    )
    department = pl.DataFrame(
        {"department_id": [1], "department_name": ["Dispatch"], "location": [None]},
        schema_overrides={"location": pl.String},
    )
    assert tf.dim_staff(staff, department).rows() == [
        (1, "A", "X", "Dispatch", "", "a@t"),
        (2, "B", "Y", "", "", "b@t"),
    ]
    currency = pl.DataFrame({"currency_id": [1, 2, 3, 4], "currency_code": ["GBP", "USD", "EUR", "XTS"]})
    assert tf.dim_currency(currency)["currency_name"].to_list() == ["Pound Sterling", "US Dollar", "Euro", "XTS"]
    days = tf.dim_date(pl.Series([date(2024, 11, 17), date(2024, 11, 18), date(2024, 11, 18)]))
    assert days.rows() == [
        (date(2024, 11, 17), 2024, 11, 17, 7, "Sunday", "November", 4),
        (date(2024, 11, 18), 2024, 11, 18, 1, "Monday", "November", 4),
    ]
    calendar = tf.calendar_days(pl.Series([date(2020, 2, 29), date(2030, 1, 1)]), today=date(2024, 11, 18))
    assert calendar[0] == date(2020, 2, 29) and calendar[1] == date(2022, 11, 1) and calendar[-1] == date(2030, 1, 1)
    assert calendar.len() == 1 + (date(2030, 1, 1) - date(2022, 11, 1)).days + 1


def test_a_following_read_gives_what_a_fresh_read_gives(tmp_path):
    """A continuous sync reads only the commits since its last run (`cache`); whatever the
    lake did in between (events past the watermark, a schema change, a sync that rolled
    back), each run gets exactly the events a fresh read of the same range gets."""
    from lake import LakeLayout, LakeWriter
    from tests.lake_fixtures import SALES_ORDER, Source, sales_order_row, with_column
    from warehouse_sync.lake_source import read_table_changes

    layout, src, cache = LakeLayout(tmp_path), Source(), {}
    lake = LakeWriter(layout)
    lake.write_batch("s1", src.snapshot(SALES_ORDER, [sales_order_row(i) for i in range(1, 4)]))
    synced = 0

    def write(schema=SALES_ORDER, shard="s1", rows=(1, 2)) -> int:
        extra = {} if schema is SALES_ORDER else {"discount": "1.50"}
        with src.transaction() as tx:
            for order in rows:
                tx.update(schema, {**sales_order_row(order, src.lsn), **extra})
        lake.write_batch(shard, tx.events)
        return src.lsn

    def read(upto: int, after: int | None = None) -> pl.DataFrame:
        nonlocal synced
        after = synced if after is None else after
        following = read_table_changes(layout, "sales_order", after, upto, cache)
        assert following.equals(read_table_changes(layout, "sales_order", after, upto))
        synced = upto
        return following

    assert read(src.lsn).height == 3  # the first run scans
    first = write()
    second = write(shard="s2", rows=(3,))
    assert read(first)["_lsn"].to_list() == [first] * 2  # `second` waits in the cache
    third = write(with_column(SALES_ORDER, "discount", "numeric(5,2)"))  # a schema change
    assert read(third)["_lsn"].to_list() == [second, third, third]
    fourth = write()
    read(fourth, after=first)  # a rolled-back run: read again
    assert read(write())["_lsn"].n_unique() == 1
