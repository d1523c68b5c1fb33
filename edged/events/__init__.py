"""Stage mark: events opened by the button or the CLI (``manager``), stored at the press
(``store``), their clips built as footage jobs (``edged.clips.job``); ``export`` lists and copies
built clips for the operator's commands.
"""
