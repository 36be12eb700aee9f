"""Sennet: an eBPF network-telemetry appliance (agent, control plane, image)."""

__version__ = "0.1.0"
