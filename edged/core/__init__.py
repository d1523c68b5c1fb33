"""The foundation every stage stands on: durable file I/O at the trust boundary, time, ids,
the SQLite store, the clock, logging with secrets scrubbed, the contract's limits, the state
folder's layout, alarms. It imports nothing else of edged's.
"""
