"""totesys, the source: its schema, a real embedded PostgreSQL to hold it, and a simulated
business that keeps it changing."""
