"""The VM harness: the appliance image booted in QEMU, driven like the NixOS test driver.

`machine` (a booted VM whose verbs read as assertions), `appliance` (boot the test
variant, or the production one watched through its console, with a monitored tap, a
management NIC and optionally files on the ESP and foreign disks), `qemu` (binary and accelerator;
the command line itself comes from the image tooling's one builder), `guest` (facts
about the agent inside, and the control plane's view of it), `traffic` (frames and
what the agent must count for them). Used by vm-tests/ and by the main job.
"""
