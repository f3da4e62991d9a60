"""The API contract shared by both daemons: models, errors, JSON codec, timestamps."""
