"""Stage clip: footage joined by remuxing into verified parts within the upload limits, and the
timelapse renderer.
"""
