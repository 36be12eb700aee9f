"""The eBPF data plane as seen from the agent: load, pin, attach, read."""
