"""Reconcile: Tencent's counts and scores read back, drift judged and corrected."""
