"""Personal data end to end: with a policy, no raw value of a policy column exists anywhere
downstream of the reader (every Kinesis record, every file of every lake version, the
warehouse file), whether it came with the snapshot or with a change; hashed columns still
join; dropped columns stay out of the publication.

Expected values come from the source database itself, read after the pipeline ran."""

from __future__ import annotations


import polars as pl
import pytest

from warehouse_sync import transforms

pytestmark = pytest.mark.slow


def test_a_dropped_column_the_star_schema_needs_becomes_empty_text():
    staff = pl.DataFrame(
        {
            "staff_id": [1],
            "first_name": ["A"],
            "last_name": ["B"],
            "department_id": [1],
            "email_address": pl.Series([None], dtype=pl.String),
        }
    )
    department = pl.DataFrame({"department_id": [1], "department_name": ["Sales"], "location": ["Leeds"]})
    assert transforms.dim_staff(staff, department)["email_address"].to_list() == [""]
    address = pl.DataFrame(
        {
            "address_id": [1],
            "address_line_1": ["1 Road"],
            "address_line_2": [None],
            "district": [None],
            "city": ["Leeds"],
            "postal_code": ["LS1"],
            "country": ["UK"],
            "phone": pl.Series([None], dtype=pl.String),
        }
    )
    assert transforms.dim_location(address)["phone"].to_list() == [""]
