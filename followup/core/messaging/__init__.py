"""Patient SMS rules: rendering, segment counting, quiet hours, caps and reply reading."""
