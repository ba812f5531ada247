"""The host agent: run each OVS-DPDK vhost-user interface in its compatibility mode.

* :mod:`~vhostcompat.agent.reconcile` (pure): from Interface rows and the
  versions this host publishes to actions (start, stop, redirect, restore,
  status);
* :mod:`~vhostcompat.agent.ports`: the agent's writes to the Open vSwitch
  database (a port re-created on another ``vhost-server-path`` with all its
  configuration kept; keys of ``external_ids``);
* :mod:`~vhostcompat.agent.journal`: the state directory (QEMU's paths, a
  re-creation in progress);
* :mod:`~vhostcompat.agent.daemon`: :class:`~vhostcompat.agent.daemon.Agent`,
  the monitor, the in-process proxies and the reconciliation loop;
* :mod:`~vhostcompat.agent.log`: one structured line per event.

``vhostcompat agent`` (:mod:`vhostcompat.cli.agent_command`) runs it.
"""
