"""lake: the Delta Lake tables (change logs and current state), time travel and maintenance."""
