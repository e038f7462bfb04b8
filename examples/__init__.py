"""Runnable examples that sit beside the broker (not part of the installed package)."""
