"""Stage ring store: the segment index (what is stored, held, lost), retention (the ring buffer:
oldest unprotected footage first), and the timeline of what footage exists.
"""
