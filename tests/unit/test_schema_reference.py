"""The schema reference as the schema tests read it (`tests.schema_reference`): every source and
warehouse table with its columns and keys, so that an edit of the document, or a misreading of
it, cannot quietly shrink what those tests check."""

from __future__ import annotations

import pytest

from tests.schema_reference import LINEAGE, read_source_tables, read_warehouse_tables
from totesys.schema import TABLES
from warehouse_sync.schema import WAREHOUSE_TABLES


def test_the_reference_gives_every_source_table_its_columns_and_keys(source_spec):
    assert set(source_spec.tables) == set(TABLES)
    for name, columns in source_spec.tables.items():
        names = [column for column, _, _ in columns]
        assert names[0] == f"{name}_id" and {"created_at", "last_updated"} <= set(names[1:]), name
        assert len(names) == len(set(names)), name
    for table, column, target, key, _, _ in source_spec.foreign_keys:
        assert column in [c for c, _, _ in source_spec.tables[table]] and key == f"{target}_id", (table, column)
    assert {table for table, *_ in source_spec.foreign_keys} >= {"counterparty", "staff", "sales_order", "payment"}
    assert source_spec.unique and set(source_spec.enums) == {"PaymentTypeName", "TransactionType"}


def test_the_reference_gives_every_warehouse_table_its_columns_and_keys(warehouse_spec):
    assert set(warehouse_spec.tables) == {table.name for table in WAREHOUSE_TABLES}
    facts = {name for name in warehouse_spec.tables if name.startswith("fact_")}
    assert set(warehouse_spec.foreign_keys) == facts
    for name, columns in warehouse_spec.tables.items():
        names = [column for column, _, _ in columns]
        assert len(names) == len(set(names)) > 1, name
        assert warehouse_spec.primary_keys[name] == names[0], name
        assert (columns[-len(LINEAGE) :] == LINEAGE) == (name in facts), name
        for column, dimension in warehouse_spec.foreign_keys.get(name, {}).items():
            assert column in names and dimension in warehouse_spec.primary_keys, (name, column)
            assert not dimension.startswith("fact_"), (name, column)


DOCUMENT = """
### 3.2 Reconstructed warehouse tables
#### dim_date
| column | type | notes |
|---|---|---|
| date_id | date | PK. The calendar date |

Built as a generated calendar.

#### dim_place (extension)
| column | type | derivation |
|---|---|---|
| place_id | int | PK ← address |
| line_2 | varchar NULL | ← address (no FK) |
| city, country | varchar | ← address |

#### fact_visit (MVP)
| column | type | FK | derivation |
|---|---|---|---|
| visit_record_id | SERIAL | PK | warehouse-assigned |
| created_date / created_time | date / time | dim_date (date) | ← split created_at |
| place_id (older ERD: `location_id`) | int | dim_place | |
| price | numeric(10,2) | – | |

### 3.3 Next section
| ignored | table |
"""


def test_rows_that_stand_for_several_columns_and_the_references_of_a_fact():
    spec = read_warehouse_tables(DOCUMENT)
    assert spec.tables == {
        "dim_date": [("date_id", "date", False)],
        "dim_place": [
            ("place_id", "int", False),
            ("line_2", "varchar", True),
            ("city", "varchar", False),
            ("country", "varchar", False),
        ],
        "fact_visit": [
            ("visit_record_id", "serial", False),
            ("created_date", "date", False),
            ("created_time", "time", False),
            ("place_id", "int", False),
            ("price", "numeric(10,2)", False),
            *LINEAGE,
        ],
    }
    assert spec.primary_keys == {"dim_date": "date_id", "dim_place": "place_id", "fact_visit": "visit_record_id"}
    assert spec.foreign_keys == {"fact_visit": {"created_date": "dim_date", "place_id": "dim_place"}}


@pytest.mark.parametrize(
    "row",
    [
        "| price | money | – | |",
        "| a / b | date / time / int | – | |",
        "| line 2 | varchar | – | |",
        "| x | int nullable | – | |",
    ],
)
def test_a_row_it_cannot_read_is_an_error_not_a_column_less(row):
    document = DOCUMENT.replace("| price | numeric(10,2) | – | |", row)
    with pytest.raises(ValueError):
        read_warehouse_tables(document)


SOURCE_DOCUMENT = """
## 2. Source database
* Enum types: `"Kind"` = {A, B}.

### 2.1 box
| column | type | null | key / notes |
|---|---|---|---|
| box_id | integer | NOT NULL | PK |
| label, colour | **text** | NULL | ERD note "nullable" |
| size | varchar(3) | NOT NULL | |

### 2.2 parcel
| column | type | null | notes |
|---|---|---|---|
| parcel_id | integer | NOT NULL | PK |
| kind | enum "Kind" | NOT NULL | A / B |
| box_id | integer | NULL | FK → box (ON DELETE SET NULL), UNIQUE |
| holder_id | integer | NOT NULL | FK → box.box_id |
| created_at, last_updated | timestamp(3) | NOT NULL | |

## 3. Warehouse
"""


def test_the_source_tables_their_postgresql_types_references_and_enums():
    spec = read_source_tables(SOURCE_DOCUMENT)
    assert spec.tables["box"] == [
        ("box_id", "integer", True),
        ("label", "text", False),
        ("colour", "text", False),
        ("size", "character varying(3)", True),
    ]
    stamp = "timestamp(3) without time zone"
    assert spec.tables["parcel"][1:] == [
        ("kind", '"Kind"', True),
        ("box_id", "integer", False),
        ("holder_id", "integer", True),
        ("created_at", stamp, True),
        ("last_updated", stamp, True),
    ]
    assert spec.foreign_keys == {
        ("parcel", "box_id", "box", "box_id", "CASCADE", "SET NULL"),
        ("parcel", "holder_id", "box", "box_id", "CASCADE", "RESTRICT"),
    }
    assert spec.unique == {("parcel", "box_id")} and spec.enums == {"Kind": ["A", "B"]}


@pytest.mark.parametrize(
    "row", ["| size | money | NOT NULL | |", "| size | text | maybe | |", "| a b | text | NULL | |"]
)
def test_a_source_row_it_cannot_read_is_an_error(row):
    with pytest.raises(ValueError):
        read_source_tables(SOURCE_DOCUMENT.replace("| size | varchar(3) | NOT NULL | |", row))
