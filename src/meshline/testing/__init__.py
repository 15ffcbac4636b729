"""Public test helpers: golden-file rendering, a real-process mesh harness, upstream test servers.

Like ``trio.testing``: shipped in the package so policy packages and users' own
tests use the same tools as Meshline's.
"""
