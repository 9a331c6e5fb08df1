"""Scoring runs: their lifecycle (states, leases, retries), the tick that dispatches due
work, and the owners' notifications (a database send queue)."""
