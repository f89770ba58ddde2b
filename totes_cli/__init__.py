"""The `totes` command line: one entry point for every stage and for running them locally."""
