"""Flush: pending value sent to Tencent once, ambiguity settled, the end game."""
