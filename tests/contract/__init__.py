"""Contract tests: the upload targets against servers written from the reference API documents."""
