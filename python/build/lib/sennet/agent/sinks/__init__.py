"""Where snapshots go: one `SnapshotSink` protocol, one module per destination."""
