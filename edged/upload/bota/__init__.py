"""The Bota presigned-URL target and the media it sends (MP4, audio-only WebM, JPEG stills)."""
