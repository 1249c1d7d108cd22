"""Failures: retry policy, dead letters, outbox, and recovering dead letters."""
