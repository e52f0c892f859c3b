"""Flush: every write of a score. Pending value sent to Tencent once, ambiguity settled, the
end game, and the audit that reads a score back and overwrites a wrong one."""
