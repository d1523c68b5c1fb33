"""The ``edged`` command line.
"""
