"""The operator console at /console: server-rendered pages over the same store as the API."""
