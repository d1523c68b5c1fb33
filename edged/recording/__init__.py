"""Stages encode → segment: one VP8 and one Opus encoder for the whole recording, written into
standalone WebM segments crash-safely; salvage recovers a segment cut off by a crash and
reconcile makes the index and the folder agree at start. The recorder drives
capture → encode → segment → ring store.
"""
