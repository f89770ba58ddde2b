"""Helpers for the end-to-end tests: the source database read back as text, an audit trail
of every version of the fact source rows kept by triggers inside the source and the checks of a
warehouse against both (`totes run` as a child process: `tests.run_process`).

The expected warehouse is computed from the SOURCE DATABASE (never from the lake or the
sync's code): its tables are read as PostgreSQL renders them in text and go through the
independent SQL transform of `tests.expected_warehouse`.

The audit trail is the record of versions the fact tables are checked against. Row-level
triggers on sales_order, purchase_order and payment append every inserted, updated and
deleted row to `e2e_audit.versions` inside the writing transaction; a row lock orders the
writers of one row, so per row the audit ids are in commit order. The audit schema is not in
the pipeline's publication (it names its tables), so the pipeline never sees it.
"""

from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import duckdb
import polars as pl
import psycopg2
from psycopg2 import sql

from cdc_reader.personal_data import NO_POLICY, Policy
from cdc_reader.source import current_wal_lsn
from tests.expected_warehouse import (
    EXPECTED_SQL,
    FACT_DATE_COLUMNS,
    expected_dim_date,
    scripted_expected,
    typed_source_sql,
)
from tests.scripted_source import SOURCE_COLUMNS, Row, ScriptedSource
from tests.warehouse_fixtures import FACT_SOURCES, current_facts_equal, dimensions_against
from tests.warehouse_fixtures import frame_equal as _frame_equal, read_table_sorted
from totesys.simulator import Simulator
from warehouse_sync import dangling_references, duplicate_current_rows
from warehouse_sync.schema import BY_NAME, FACTS, conform, projected_columns

REPO = Path(__file__).resolve().parents[1]
REAL_SNAPSHOT = "snapshot_2024-11-15_aidan-mooney"

# -- the source, read back ---------------------------------------------------------------------

SourceRows = dict[str, dict[str, Row]]
"""table → primary key (text) → row (column → text or None), the columns of SOURCE_COLUMNS."""


def read_source(dsn: str) -> SourceRows:
    """Every row of every totesys table, in PostgreSQL's text form (columns added at run time,
    such as the simulator's sales_channel, are not part of any warehouse table: left out)."""
    rows: SourceRows = {}
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            for table, columns in SOURCE_COLUMNS.items():
                names = [name for name, _ in columns]
                cur.execute(
                    sql.SQL("SELECT {} FROM {}").format(
                        sql.SQL(", ").join(sql.SQL("{}::text").format(sql.Identifier(n)) for n in names),
                        sql.Identifier(table),
                    )
                )
                rows[table] = {values[0]: dict(zip(names, values)) for values in cur.fetchall()}
    finally:
        conn.close()
    return rows


def execute(dsn: str, statement: str, params=None) -> int:
    """Run one statement in its own transaction; return the rows it touched."""
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement, params)
            return cur.rowcount
    finally:
        conn.close()


current_lsn = current_wal_lsn


def delete_and_change_sales_orders(dsn: str, ids: list[str]) -> tuple[list[str], list[str]]:
    """Delete the sales orders `ids[:3]` and add 1000 units to `ids[3:6]`; (deleted ids, changed ids)."""
    gone, changed = ids[:3], ids[3:6]
    assert execute(dsn, "DELETE FROM sales_order WHERE sales_order_id = ANY(%s::int[])", (gone,)) == 3
    assert (
        execute(
            dsn,
            "UPDATE sales_order SET units_sold = units_sold + 1000 WHERE sales_order_id = ANY(%s::int[])",
            (changed,),
        )
        == 3
    )
    return gone, changed


# -- the audit trail ---------------------------------------------------------------------------

AUDITED = tuple(FACT_SOURCES.values())
AUDIT_SQL = """
CREATE SCHEMA e2e_audit;
CREATE TABLE e2e_audit.versions (
    id bigserial PRIMARY KEY, tbl text NOT NULL, key text NOT NULL, op text NOT NULL, data jsonb);
CREATE FUNCTION e2e_audit.record() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        INSERT INTO e2e_audit.versions (tbl, key, op, data)
        VALUES (TG_TABLE_NAME, to_jsonb(OLD) ->> (TG_TABLE_NAME || '_id'), 'd', NULL);
        RETURN OLD;
    END IF;
    INSERT INTO e2e_audit.versions (tbl, key, op, data)
    VALUES (TG_TABLE_NAME, to_jsonb(NEW) ->> (TG_TABLE_NAME || '_id'), lower(left(TG_OP, 1)), to_jsonb(NEW));
    RETURN NEW;
END $$;
"""


def install_audit(dsn: str) -> None:
    """Start recording every version of the fact source rows (see the module docstring)."""
    statements = [AUDIT_SQL] + [
        f"CREATE TRIGGER e2e_audit AFTER INSERT OR UPDATE OR DELETE ON {table} "
        f"FOR EACH ROW EXECUTE FUNCTION e2e_audit.record();"
        f"CREATE TRIGGER e2e_audit_truncate BEFORE TRUNCATE ON {table} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION e2e_audit.no_truncate();"
        for table in AUDITED
    ]
    statements.insert(
        1,
        """
        CREATE FUNCTION e2e_audit.no_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit trail does not follow TRUNCATE'; END $$;""",
    )
    execute(dsn, "\n".join(statements))


def audit_trail(dsn: str) -> dict[str, dict[str, list[Row | None]]]:
    """table → key → the versions the triggers saw, oldest first (None: deleted)."""
    trail: dict[str, dict[str, list[Row | None]]] = {t: {} for t in AUDITED}
    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(
                "SELECT tbl, key, (SELECT jsonb_object_agg(k, v) FROM jsonb_each_text(data) AS e(k, v)) "
                "FROM e2e_audit.versions ORDER BY id"
            )
            for table, key, data in cur.fetchall():
                row = None if data is None else {name: data.get(name) for name, _ in SOURCE_COLUMNS[table]}
                trail[table].setdefault(key, []).append(row)
    finally:
        conn.close()
    return trail


# -- the expected warehouse --------------------------------------------------------------------


def utc_today() -> date:
    return datetime.now(timezone.utc).date()


def seed_audited(dsn: str, seed: int, days: int) -> tuple[SourceRows, date, int]:
    """`days` days of totesys history, then the audit trail installed: the source's rows, the
    UTC date and the source's LSN at the start of the workload that follows."""
    with Simulator(dsn, seed=seed) as simulator:
        simulator.seed_history(days)
    install_audit(dsn)
    return read_source(dsn), utc_today(), current_lsn(dsn)


def check_no_ghosts(target, gone: list[str]) -> None:
    """None of the sales orders `gone` (deleted at the source) is live in the warehouse."""
    facts = read_table_sorted(target, "fact_sales_order")
    ghosts = facts.filter(
        pl.col("is_current") & ~pl.col("is_deleted") & pl.col("sales_order_id").is_in([int(k) for k in gone])
    )
    assert ghosts.height == 0, f"sales orders deleted at the source are live in the warehouse:\n{ghosts}"


def check_against_source(
    target, rows: SourceRows, today: tuple[date, ...] = (), policy: Policy = NO_POLICY, gone: list[str] = ()
) -> None:
    """The warehouse and the independent transform of the source's `rows` (as `policy` lets
    them leave the reader):

    - none of the sales orders `gone` (deleted at the source) is live in the warehouse;
    - no fact row references a missing dimension row and no business key has two current rows;
    - every dimension equals the transform (a row whose source row is gone may stay only while
      a fact row still references it);
    - the current, not deleted fact rows equal the transform of the source's current rows,
      and no current fact row says "deleted" for a row the source has;
    - dim_date is the calendar up to a year after the day of the last sync (one of `today`)
      and covers every date any fact row references.
    """
    rows = {
        table: {key: policy.apply(f"public.{table}", row) for key, row in by_key.items()}
        for table, by_key in rows.items()
    }
    if gone:
        check_no_ghosts(target, gone)
    dangling = dangling_references(target)
    assert dangling == {}, f"fact rows reference missing dimension rows: {dangling}"
    duplicates = duplicate_current_rows(target)
    assert duplicates == {}, f"business keys with several current rows: {duplicates}"
    connection, expected = scripted_expected(ScriptedSource(rows=rows))
    facts = {fact.name: read_table_sorted(target, fact.name) for fact in FACTS}
    for fact in FACTS:
        deleted_now = current_facts_equal(fact, facts[fact.name], expected)
        alive = sorted({str(k) for k in deleted_now} & set(rows[FACT_SOURCES[fact.name]]), key=int)
        assert not alive, f"{fact.name}: current rows say deleted, the source has them: {alive[:20]}"
    for dimension, actual, want, extra in dimensions_against(target, expected):
        referenced = {
            k
            for fact in FACTS
            for column in fact.foreign_keys
            if column.references == dimension.name
            for k in facts[fact.name][column.name].to_list()
        }
        unreferenced = sorted(set(extra[dimension.key].to_list()) - referenced)
        assert not unreferenced, f"{dimension.name}: rows the source does not have: {unreferenced[:20]}"
        _frame_equal(dimension.name, actual.filter(pl.col(dimension.key).is_in(want[dimension.key].implode())), want)
    referenced_days = sorted(
        {d for fact in FACTS for c in FACT_DATE_COLUMNS[fact.name] for d in facts[fact.name][c].to_list()}
    )
    actual = read_table_sorted(target, "dim_date")
    candidates = today or (utc_today(),)
    failures = []
    for day in dict.fromkeys(candidates):
        want = conform(expected_dim_date(connection, referenced_days, day), BY_NAME["dim_date"].polars_schema)
        try:
            _frame_equal("dim_date", actual, want)
            return
        except AssertionError as error:
            failures.append(error)
    raise failures[0]


# -- versions ----------------------------------------------------------------------------------


def expected_fact_versions(
    fact_name: str, baseline: dict[str, Row], trail: dict[str, list[Row | None]]
) -> pl.DataFrame:
    """The fact rows each business key should have, in order: the row as of the pipeline's
    initial snapshot (`baseline`), then every audited version whose projection or
    deletedness differs from the one before it; a deletion carries the last live values.
    Columns: the fact's projected columns, `is_deleted`, `version` (0, 1, ... per key)."""
    fact = BY_NAME[fact_name]
    keys = sorted(set(baseline) | set(trail), key=int)
    live = [baseline[k] for k in keys if k in baseline] + [r for k in keys for r in trail.get(k, []) if r is not None]
    # every live version through the test's SQL in one query, looked up by the row's identity
    projected = _project_rows(fact_name, live)
    by_id = {id(row): values for row, values in zip(live, projected)}
    columns = projected_columns(fact)
    out: list[tuple] = []
    for key in keys:
        history = ([baseline[key]] if key in baseline else []) + trail.get(key, [])
        previous: tuple | None = None  # projected values of the last appended version
        deleted = True
        version = 0
        for row in history:
            if row is None:
                if not deleted:
                    out.append((*previous, True, version))
                    version += 1
                deleted = True
                continue
            values = by_id[id(row)]
            if deleted or values != previous:
                out.append((*values, False, version))
                version += 1
            previous, deleted = values, False
    schema = {n: fact.polars_schema[n] for n in columns}
    return pl.DataFrame(out, schema={**schema, "is_deleted": pl.Boolean, "version": pl.Int64}, orient="row")


def _project_rows(fact_name: str, rows: list[Row]) -> list[tuple]:
    """The test's own fact SQL over `rows`, in the order given."""
    table = FACT_SOURCES[fact_name]
    names = [n for n, _ in SOURCE_COLUMNS[table]]
    frame = pl.DataFrame(
        [[r.get(n) for n in names] + [i] for i, r in enumerate(rows)],
        schema={**{n: pl.String for n in names}, "_ord": pl.Int64},
        orient="row",
    )
    connection = duckdb.connect()
    connection.register("text_rows", frame.to_arrow())
    typed = typed_source_sql(table, "text_rows").replace(" FROM text_rows", ", _ord FROM text_rows")
    connection.execute(f"CREATE VIEW s_{table} AS {typed}")
    query = EXPECTED_SQL[fact_name].rstrip()
    select = query.replace(f"FROM s_{table}", f", _ord FROM s_{table} ORDER BY _ord")
    result = pl.from_arrow(connection.sql(select).to_arrow_table())
    assert result["_ord"].to_list() == list(range(len(rows)))
    schema = BY_NAME[fact_name].polars_schema
    projected = conform(result, {n: schema[n] for n in projected_columns(BY_NAME[fact_name])})
    return list(projected.iter_rows())


def check_versions(target, baseline: SourceRows, trail: dict[str, dict[str, list[Row | None]]]) -> dict[str, int]:
    """Every fact table holds exactly the versions of `expected_fact_versions`, per business
    key in record-id order: a lost, doubled, reordered or wrong version fails. Also: the last
    row of each key is its only current row, and each key's lineage is ordered by LSN.
    Returns the number of fact rows checked per table."""
    checked = {}
    for fact in FACTS:
        table = FACT_SOURCES[fact.name]
        want = expected_fact_versions(fact.name, baseline[table], trail[table])
        actual = read_table_sorted(target, fact.name).sort(fact.key)
        actual = actual.with_columns(version=pl.int_range(pl.len(), dtype=pl.Int64).over(fact.business_key))
        lineage = actual.group_by(fact.business_key).agg(
            current=pl.col("is_current").filter(pl.col("is_current")).len(),
            last_current=pl.col("is_current").last(),
            ordered=(pl.struct("source_lsn", "source_seq").rank("dense") == pl.int_range(1, pl.len() + 1)).all(),
        )
        broken = lineage.filter((pl.col("current") != 1) | ~pl.col("last_current") | ~pl.col("ordered"))
        assert broken.height == 0, (
            f"{fact.name}: keys whose last row is not their one current row, "
            f"or whose rows are not in LSN order:\n{broken}"
        )
        actual = actual.select(want.columns).sort(fact.business_key, "version")
        want = want.sort(fact.business_key, "version")
        if actual.height != want.height or not actual.equals(want):
            both = actual.join(want, on=want.columns, how="anti", nulls_equal=True)
            missing = want.join(actual, on=want.columns, how="anti", nulls_equal=True)
            raise AssertionError(
                f"{fact.name}: {actual.height} fact rows, {want.height} versions expected; "
                f"unexpected rows:\n{both}\nmissing versions:\n{missing}"
            )
        checked[fact.name] = actual.height
    return checked


def deleted_keys(rows: SourceRows, trail: dict[str, dict[str, list[Row | None]]]) -> dict[str, set[str]]:
    """table → keys the audit saw deleted and the source no longer has."""
    return {
        table: {k for k, versions in trail[table].items() if versions[-1] is None and k not in rows[table]}
        for table in AUDITED
    }


def check_deleted_rows_visible(target, rows: SourceRows, trail) -> int:
    """Every source row deleted during the run has a current fact row that says so."""
    total = 0
    for fact in FACTS:
        gone = deleted_keys(rows, trail)[FACT_SOURCES[fact.name]]
        current = read_table_sorted(target, fact.name).filter(pl.col("is_current"))
        flagged = {str(k) for k in current.filter(pl.col("is_deleted"))[fact.business_key].to_list()}
        assert gone <= flagged, (
            f"{fact.name}: deleted at the source, not deleted in the warehouse: {sorted(gone - flagged, key=int)[:20]}"
        )
        total += len(gone)
    return total


def check_workload(target, dsn: str, baseline, days, policy: Policy = NO_POLICY) -> dict[str, int]:
    """The warehouse against the source (`days`: the candidates for today) and its audit trail:
    current rows, deleted rows, every version; a summary of what was checked."""
    rows = read_source(dsn)
    trail = audit_trail(dsn)
    check_against_source(target, rows, days, policy)
    deleted = check_deleted_rows_visible(target, rows, trail)
    checked = check_versions(target, baseline, trail)
    return {"deleted": deleted, **checked, "audited": sum(len(v) for t in trail.values() for v in t.values())}
