"""PostgreSQL text values → typed Arrow columns (lake.arrow_types), and schema compatibility."""

from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal

import pyarrow as pa
import pytest

from lake.arrow_types import arrow_type, convert_column
from lake.errors import IncompatibleSchemaError, ValueConversionError
from lake.layout import storage_options_from_env
from lake.schemas import columns_to_widen, source_fields
from tests.lake_fixtures import SALES_ORDER, with_column, with_type


@pytest.mark.parametrize(
    "type_name, expected",
    [
        ("smallint", pa.int16()),
        ("integer", pa.int32()),
        ("bigint", pa.int64()),
        ("numeric(10,2)", pa.decimal128(10, 2)),
        ("numeric(38,0)", pa.decimal128(38, 0)),
        ("numeric(50,2)", pa.string()),
        ("numeric", pa.string()),
        ("real", pa.float32()),
        ("double precision", pa.float64()),
        ("boolean", pa.bool_()),
        ("timestamp(3) without time zone", pa.timestamp("us")),
        ("timestamp without time zone", pa.timestamp("us")),
        ("timestamp with time zone", pa.timestamp("us", "UTC")),
        ("timestamp(6) with time zone", pa.timestamp("us", "UTC")),
        ("date", pa.date32()),
        ("bytea", pa.binary()),
        ("text", pa.string()),
        ("character varying(3)", pa.string()),
        ('"TransactionType"', pa.string()),
        ("uuid", pa.string()),
        ("jsonb", pa.string()),
        ("interval", pa.string()),
        ("integer[]", pa.string()),
        ("public.some_domain", pa.string()),
    ],
)
def test_arrow_type_of_each_postgresql_type(type_name, expected):
    assert arrow_type(type_name) == expected


@pytest.mark.parametrize(
    "type_name, texts, values",
    [
        ("integer", ["1", "-2147483648", None], [1, -2147483648, None]),
        ("bigint", ["9223372036854775807"], [9223372036854775807]),
        (
            "numeric(10,2)",
            ["3.50", "-0.01", "99999999.99", None],
            [Decimal("3.50"), Decimal("-0.01"), Decimal("99999999.99"), None],
        ),
        ("numeric", ["1.000000000000000000001"], ["1.000000000000000000001"]),
        ("double precision", ["NaN", "1e+30"], [None, 1e30]),
        ("boolean", ["t", "f", None], [True, False, None]),
        (
            "timestamp(3) without time zone",
            ["2024-05-01 12:34:56.123", "2024-05-01 00:00:00"],
            [datetime(2024, 5, 1, 12, 34, 56, 123000), datetime(2024, 5, 1)],
        ),
        (
            "timestamp with time zone",
            ["2024-05-01 12:34:56.5+02", "2024-05-01 12:34:56+05:30"],
            [
                datetime(2024, 5, 1, 10, 34, 56, 500000, tzinfo=timezone.utc),
                datetime(2024, 5, 1, 7, 4, 56, tzinfo=timezone.utc),
            ],
        ),
        ("date", ["2024-05-01", None], [date(2024, 5, 1), None]),
        ("bytea", ["\\x00ff41", "\\x", None], [b"\x00\xffA", b"", None]),
        ("text", ["2024-05-01", "O'Hara"], ["2024-05-01", "O'Hara"]),
        ('"TransactionType"', ["SALE"], ["SALE"]),
        ("integer[]", ["{1,2,NULL}"], ["{1,2,NULL}"]),
    ],
)
def test_columns_convert_from_text(type_name, texts, values):
    column = convert_column(texts, type_name, "c")
    assert column.type == arrow_type(type_name)
    converted = column.to_pylist()
    if type_name == "double precision":
        assert converted[0] != converted[0] and converted[1:] == values[1:]  # NaN
    else:
        assert converted == values


@pytest.mark.parametrize(
    "type_name, texts, bad",
    [
        ("timestamp(3) without time zone", ["2024-05-01 00:00:00", "infinity", "0044-03-15 00:00:00 BC"], [1, 2]),
        ("numeric(10,2)", ["1.00", "NaN"], [1]),
        ("integer", ["1", "2147483648", "x"], [1, 2]),
        ("boolean", ["t", "yes"], [1]),
        ("date", ["2024-05-01", "10000-01-01"], [1]),
    ],
)
def test_values_that_do_not_fit_are_reported_with_their_rows(type_name, texts, bad):
    with pytest.raises(ValueConversionError) as raised:
        convert_column(texts, type_name, "col")
    assert raised.value.rows == bad and raised.value.column == "col"
    assert texts[bad[0]] in str(raised.value)


def test_added_columns_need_nothing_changed_types_widen_reserved_names_are_refused():
    existing = pa.schema(source_fields(SALES_ORDER))
    assert columns_to_widen("t", existing, source_fields(with_column(SALES_ORDER, "note", "text"))) == {}
    longer = with_type(SALES_ORDER, "agreed_delivery_date", "character varying(10)")
    assert columns_to_widen("t", existing, source_fields(longer)) == {}
    assert columns_to_widen("t", None, source_fields(SALES_ORDER)) == {}
    for column, new_type, wider in [
        ("units_sold", "bigint", pa.int64()),
        ("units_sold", "text", pa.string()),
        ("unit_price", "numeric(12,2)", pa.decimal128(12, 2)),
    ]:
        changed = source_fields(with_type(SALES_ORDER, column, new_type))
        assert columns_to_widen("t", existing, changed) == {column: wider}
    wide = pa.schema([pa.field("units_sold", pa.int64())])
    assert columns_to_widen("t", wide, source_fields(SALES_ORDER)) == {}  # bigint → integer: still fits
    with pytest.raises(IncompatibleSchemaError, match="_lsn"):
        columns_to_widen("t", None, source_fields(with_column(SALES_ORDER, "_lsn", "bigint")))


def test_storage_options_come_from_the_standard_aws_variables():
    env = {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:5000",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_DEFAULT_REGION": "eu-west-2",
        "AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000",
    }
    assert storage_options_from_env(env) == {
        "AWS_ENDPOINT_URL": "http://127.0.0.1:9000",
        "AWS_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "k",
        "AWS_SECRET_ACCESS_KEY": "s",
        "AWS_REGION": "eu-west-2",
    }
    assert storage_options_from_env({}) == {}
