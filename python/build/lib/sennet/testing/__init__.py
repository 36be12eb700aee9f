"""Support for Sennet's tests, benchmarks, main job and VM harness (never the product's runtime).

One place for the plumbing every one of them needs, so the copies cannot
disagree: the control plane and the agent as real processes (`controlplane`,
`agent`), test-owned network namespaces, veth pairs, taps and bpffs mounts
(`netlab`), a free port (`ports`), a Prometheus scrape (`scrape`), and the
`Figure` every benchmark prints (`figures`). Neither the agent nor the control
plane imports from here, and the appliance image leaves it out.
"""
