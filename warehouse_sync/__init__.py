"""warehouse_sync: projects the lake's change logs into the star-schema warehouse."""
