"""Unit tests: one module or stage alone, with real encodes and real files, no daemon."""
