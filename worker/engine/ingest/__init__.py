"""Ingest: webhook bodies parsed, gifts stored once, floods drained, invalid input dead-lettered."""
