"""The warehouse's tables, defined once and rendered as DDL for DuckDB and for PostgreSQL: one name for its parts.

Three kinds of table:

- the 11 star-schema tables of `shared/reference/totesys-schema.md` §3, same names, same
  column order, same types; each fact ends with lineage columns (`star_schema`);
- `_src_<table>`: mirrors of the current state of the source tables, and the sync's own
  `_sync_checkpoint`, `_sync_partial` and `_sync_rejected` (`sync_tables`);

all made of `table_model`'s tables, columns and logical types, and rendered per dialect by
`ddl`. Callers import from here, whichever part defines a name.
"""

from warehouse_sync.ddl import alter_column_type, create_table, next_value, row_counts_sql, schema_ddl
from warehouse_sync.star_schema import (
    BY_NAME,
    DIM_COUNTERPARTY,
    DIM_CURRENCY,
    DIM_DATE,
    DIM_DESIGN,
    DIM_LOCATION,
    DIM_PAYMENT_TYPE,
    DIM_STAFF,
    DIM_TRANSACTION,
    DIMENSIONS,
    FACT_PAYMENT,
    FACT_PURCHASE_ORDER,
    FACT_SALES_ORDER,
    FACTS,
    LINEAGE,
    LINEAGE_NAMES,
    WAREHOUSE_TABLES,
    projected_columns,
    references_to,
)
from warehouse_sync.sync_tables import (
    BASE_SOURCES,
    CHECKPOINT,
    INTERNAL_TABLES,
    PARTIAL,
    REJECTED,
    SOURCE_META,
    SOURCES,
    logical_of,
    source_columns,
    widened_mirror,
)
from warehouse_sync.table_model import (
    DUCKDB,
    POSTGRES,
    TYPES,
    Column,
    Index,
    Table,
    column_list,
    conform,
    logical_type,
    quote_identifier,
    quote_literal,
    sql_type,
)

__all__ = [
    "BASE_SOURCES",
    "BY_NAME",
    "CHECKPOINT",
    "DIMENSIONS",
    "DIM_COUNTERPARTY",
    "DIM_CURRENCY",
    "DIM_DATE",
    "DIM_DESIGN",
    "DIM_LOCATION",
    "DIM_PAYMENT_TYPE",
    "DIM_STAFF",
    "DIM_TRANSACTION",
    "DUCKDB",
    "FACTS",
    "FACT_PAYMENT",
    "FACT_PURCHASE_ORDER",
    "FACT_SALES_ORDER",
    "INTERNAL_TABLES",
    "LINEAGE",
    "LINEAGE_NAMES",
    "PARTIAL",
    "POSTGRES",
    "REJECTED",
    "SOURCES",
    "SOURCE_META",
    "TYPES",
    "WAREHOUSE_TABLES",
    "Column",
    "Index",
    "Table",
    "alter_column_type",
    "column_list",
    "conform",
    "create_table",
    "logical_of",
    "logical_type",
    "next_value",
    "projected_columns",
    "quote_identifier",
    "quote_literal",
    "references_to",
    "row_counts_sql",
    "schema_ddl",
    "source_columns",
    "sql_type",
    "widened_mirror",
]
