"""Development tooling, apart from the public API (`rowembed.dev`): the demo, the
benchmark, a corpus every Python has, and embedded PostgreSQL and Redis servers.

Its servers and the bundled model come with the same install as rowembed; the
bench scripts in bench/ use the helpers this package exports.
"""
