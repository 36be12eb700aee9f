"""The device-side updater: verify a signed bundle, write the inactive slot, try, then commit
or roll back.

It runs as root on the appliance (`python3 -m sennet.update.cli`), separate from
the agent, which gives up root: the agent only reports its health and drops
bundles it fetched into its own directory; this package re-verifies everything
and is the only writer of slots, boot entries and the update status.
"""
