"""Named queries that answer the business's usual questions (`totes query --example NAME`).

DuckDB SQL over the warehouse; "current" means the latest version of a fact that is not a
deletion.
"""

from __future__ import annotations

EXAMPLES: dict[str, tuple[str, str]] = {
    "sales-by-month": (
        "Orders, units and revenue per month and currency",
        """
        SELECT d.year, d.month, d.month_name, c.currency_code,
               count(*) AS orders, sum(f.units_sold) AS units, sum(f.units_sold * f.unit_price) AS revenue
        FROM fact_sales_order f
        JOIN dim_date d ON d.date_id = f.created_date
        JOIN dim_currency c ON c.currency_id = f.currency_id
        WHERE f.is_current AND NOT f.is_deleted
        GROUP BY d.year, d.month, d.month_name, c.currency_code
        ORDER BY d.year, d.month, c.currency_code
        """,
    ),
    "top-designs": (
        "The ten designs that sold the most units",
        """
        SELECT ds.design_id, ds.design_name, ds.file_name, count(*) AS orders, sum(f.units_sold) AS units
        FROM fact_sales_order f JOIN dim_design ds ON ds.design_id = f.design_id
        WHERE f.is_current AND NOT f.is_deleted
        GROUP BY ds.design_id, ds.design_name, ds.file_name
        ORDER BY units DESC, ds.design_id
        LIMIT 10
        """,
    ),
    "unpaid-by-counterparty": (
        "Payments due and still unpaid, per counterparty and currency",
        """
        SELECT cp.counterparty_legal_name, c.currency_code, count(*) AS payments,
               sum(p.payment_amount) AS amount, min(p.payment_date) AS oldest_due
        FROM fact_payment p
        JOIN dim_counterparty cp ON cp.counterparty_id = p.counterparty_id
        JOIN dim_currency c ON c.currency_id = p.currency_id
        WHERE p.is_current AND NOT p.is_deleted AND NOT p.paid AND p.payment_date < current_date
        GROUP BY cp.counterparty_legal_name, c.currency_code
        ORDER BY amount DESC
        """,
    ),
    "order-history": (
        "Every version of the sales order that changed most often (deletions included)",
        """
        WITH busiest AS (
            SELECT sales_order_id FROM fact_sales_order
            GROUP BY sales_order_id ORDER BY count(*) DESC, sales_order_id LIMIT 1
        )
        SELECT f.sales_record_id, f.sales_order_id, f.last_updated_date, f.last_updated_time,
               f.sales_staff_id, f.design_id, f.agreed_delivery_date, f.agreed_delivery_location_id,
               f.units_sold, f.unit_price, f.is_current, f.is_deleted, f.valid_from, f.valid_to
        FROM fact_sales_order f JOIN busiest USING (sales_order_id)
        ORDER BY f.sales_record_id
        """,
    ),
}
