"""Accounts and signed playback (see the accounts issue)."""
