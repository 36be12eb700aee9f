"""Generated protobuf bindings (see sennet/proto/generate.py)."""
