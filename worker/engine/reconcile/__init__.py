"""Reconcile: Tencent's gift counts read back, drift judged and its correction decided."""
