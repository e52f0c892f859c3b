"""Battles: registration, routing of gifts to rooms, the end, and battles that never start."""
