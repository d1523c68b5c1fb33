"""Stage recall: video recall requests (parsed, checked), the synced inbox, and the service
that protects, builds and delivers them.
"""
