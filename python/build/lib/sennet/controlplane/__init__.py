"""Sennet control plane: authenticated gRPC/Connect heartbeats, SQLite store, /health, /metrics.

It meets the agent only through `proto/sentinel/v1` (the generated bindings in
`sennet.proto`); it never imports agent code.
"""
