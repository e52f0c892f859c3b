"""Celery tasks of battle-scorer: ingest (`scorer.webhook[s]`, `scorer.drain`) and control."""
