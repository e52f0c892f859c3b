"""The engine: batching, flushing and reconciling battle scores. Importing it starts nothing."""
