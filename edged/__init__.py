"""edged: a bodycam daemon for single-board computers."""

__version__ = "0.1.0"
