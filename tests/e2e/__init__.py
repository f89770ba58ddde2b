"""End-to-end tests: the project's processes, the whole pipeline, the browser, terraform."""
