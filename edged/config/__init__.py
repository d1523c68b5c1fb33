"""Configuration: the typed schema with each key's rule and trust class, validation, the
synced layer over the local file, and signed configs.
"""
