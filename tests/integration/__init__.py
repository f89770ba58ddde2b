"""Integration tests: one real part each (PostgreSQL, kinesalite, moto's server, Delta, DuckDB)."""
