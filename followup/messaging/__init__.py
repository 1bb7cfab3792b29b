"""Patient SMS: template rendering, segment counting and sending policy."""
