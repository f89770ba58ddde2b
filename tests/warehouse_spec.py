"""The warehouse's tables as the schema reference (§3) lists them: columns, keys and references,
written out by hand so the tests compare `warehouse_sync.schema` with the spec, not with itself."""

from __future__ import annotations


LINEAGE = [
    "is_current boolean",
    "is_deleted boolean",
    "source_op varchar",
    "source_lsn bigint",
    "source_seq bigint",
    "valid_from timestamptz null",
    "valid_to timestamptz null",
]


SPEC = {
    "dim_date": [
        "date_id date",
        "year int",
        "month int",
        "day int",
        "day_of_week int",
        "day_name varchar",
        "month_name varchar",
        "quarter int",
    ],
    "dim_staff": [
        "staff_id int",
        "first_name varchar",
        "last_name varchar",
        "department_name varchar",
        "location varchar",
        "email_address varchar",
    ],
    "dim_location": [
        "location_id int",
        "address_line_1 varchar",
        "address_line_2 varchar null",
        "district varchar null",
        "city varchar",
        "postal_code varchar",
        "country varchar",
        "phone varchar",
    ],
    "dim_design": ["design_id int", "design_name varchar", "file_location varchar", "file_name varchar"],
    "dim_currency": ["currency_id int", "currency_code varchar", "currency_name varchar"],
    "dim_counterparty": [
        "counterparty_id int",
        "counterparty_legal_name varchar",
        "counterparty_legal_address_line_1 varchar",
        "counterparty_legal_address_line_2 varchar null",
        "counterparty_legal_district varchar null",
        "counterparty_legal_city varchar",
        "counterparty_legal_postal_code varchar",
        "counterparty_legal_country varchar",
        "counterparty_legal_phone_number varchar",
    ],
    "dim_payment_type": ["payment_type_id int", "payment_type_name varchar"],
    "dim_transaction": [
        "transaction_id int",
        "transaction_type varchar",
        "sales_order_id int null",
        "purchase_order_id int null",
    ],
    "fact_sales_order": [
        "sales_record_id serial",
        "sales_order_id int",
        "created_date date",
        "created_time time",
        "last_updated_date date",
        "last_updated_time time",
        "sales_staff_id int",
        "counterparty_id int",
        "units_sold int",
        "unit_price numeric(10,2)",
        "currency_id int",
        "design_id int",
        "agreed_payment_date date",
        "agreed_delivery_date date",
        "agreed_delivery_location_id int",
        *LINEAGE,
    ],
    "fact_purchase_order": [
        "purchase_record_id serial",
        "purchase_order_id int",
        "created_date date",
        "created_time time",
        "last_updated_date date",
        "last_updated_time time",
        "staff_id int",
        "counterparty_id int",
        "item_code varchar",
        "item_quantity int",
        "item_unit_price numeric",
        "currency_id int",
        "agreed_delivery_date date",
        "agreed_payment_date date",
        "agreed_delivery_location_id int",
        *LINEAGE,
    ],
    "fact_payment": [
        "payment_record_id serial",
        "payment_id int",
        "created_date date",
        "created_time time",
        "last_updated_date date",
        "last_updated_time time",
        "transaction_id int",
        "counterparty_id int",
        "payment_amount numeric",
        "currency_id int",
        "payment_type_id int",
        "paid boolean",
        "payment_date date",
        *LINEAGE,
    ],
}


PRIMARY_KEYS = {name: columns[0].split()[0] for name, columns in SPEC.items()}


FOREIGN_KEYS = {
    "fact_sales_order": {
        "created_date": "dim_date",
        "last_updated_date": "dim_date",
        "sales_staff_id": "dim_staff",
        "counterparty_id": "dim_counterparty",
        "currency_id": "dim_currency",
        "design_id": "dim_design",
        "agreed_payment_date": "dim_date",
        "agreed_delivery_date": "dim_date",
        "agreed_delivery_location_id": "dim_location",
    },
    "fact_purchase_order": {
        "created_date": "dim_date",
        "last_updated_date": "dim_date",
        "staff_id": "dim_staff",
        "counterparty_id": "dim_counterparty",
        "currency_id": "dim_currency",
        "agreed_delivery_date": "dim_date",
        "agreed_payment_date": "dim_date",
        "agreed_delivery_location_id": "dim_location",
    },
    "fact_payment": {
        "created_date": "dim_date",
        "last_updated_date": "dim_date",
        "transaction_id": "dim_transaction",
        "counterparty_id": "dim_counterparty",
        "currency_id": "dim_currency",
        "payment_type_id": "dim_payment_type",
        "payment_date": "dim_date",
    },
}


def _spec(table: str) -> list[tuple[str, str, bool]]:
    out = []
    for item in SPEC[table]:
        name, type_, *rest = item.split()
        out.append((name, type_, rest == ["null"]))
    return out
