"""Celery tasks of battle-scorer: ingest (`scorer.webhook[s]`) and control (tick, flush, reconcile)."""
