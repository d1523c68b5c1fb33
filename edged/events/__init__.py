"""Stage mark: events opened by the button or the CLI, their holds, and their clips."""
