"""Stage clip: held footage turned into upload-ready parts in the outbox.

``job`` is the footage job marks and recalls share (hold, wait, build, manifest, outbox, mark
built, release, recover); ``window`` the footage a job wants and how it is held; ``clock`` the
recording's clock as the job reads it; ``builder`` joins segments by remuxing into verified parts
within the upload limits; ``timelapse`` renders a long window into one part.
"""
