"""The host agent: run each OVS-DPDK vhost-user interface in its compatibility mode.

* :mod:`~vhostcompat.agent.reconcile` (pure): from Interface rows and the
  versions this host publishes to actions (start, stop, redirect, restore,
  status).
"""
