"""Battles: registration, routing of gifts to rooms, the final window, the end, and battles
that never start."""
