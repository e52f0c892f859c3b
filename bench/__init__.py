"""Benchmarks of battle-scorer (not tests): `python -m bench.run --help`."""
