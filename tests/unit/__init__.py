"""Unit tests: pure cores in memory, seconds, no servers and no child processes."""
