"""Small utilities shared by the agent and the control plane (never each other's code)."""
