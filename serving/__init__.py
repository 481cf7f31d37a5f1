"""``hematune serve``: a release behind a browser upload page and a JSON prediction API.

`champion` holds the verified release and follows the champion pointer,
`uploads` turns a request body into named image bytes within the limits,
`batching` runs the model on the images of concurrent requests together,
`app` wires them into a FastAPI application, and `server` checks the
settings, binds the port and runs it (called by the CLI, `search.cli`, so it
imports nothing heavy at module level).
"""
