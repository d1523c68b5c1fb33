"""Daemon tests: the real daemon (in a thread or its own process) recording, marking, recalling."""
