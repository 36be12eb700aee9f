"""QEMU test harness for the Sennet appliance (modelled on the NixOS test driver)."""
