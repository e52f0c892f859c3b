"""Ingest: gifts stored once, routed to their battles, floods drained, dead letters replayed."""
