"""The ``edged`` command line."""
