"""The Sennet agent: drives the eBPF data plane and reports what it sees."""
