"""Tasks the test suite sends through a real broker to real workers."""
