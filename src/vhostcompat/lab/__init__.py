"""The real-frontend lab: QEMU, a qtest virtio-pci driver, QMP, migration, testpmd.

Everything here starts real programs (Debian's QEMU 7.2, the private QEMU 10.0
and DPDK testpmd) as
child processes and cleans up after them, so tests, benchmarks and
``vhostcompat demo`` can play the whole story against any vhost-user backend:

* :mod:`~vhostcompat.lab.process`: child processes, logs, bounded waits;
* :mod:`~vhostcompat.lab.firmware`: the halt-only guest firmware;
* :mod:`~vhostcompat.lab.qemu`: ``QemuVm``, its command line, ``run_qemu``;
* :mod:`~vhostcompat.lab.qtest`: the qtest client and virtio-net PCI driver;
* :mod:`~vhostcompat.lab.qmp`: virtio status, migration over QMP;
* :mod:`~vhostcompat.lab.testpmd`: DPDK testpmd as a vhost-user backend;
* :mod:`~vhostcompat.lab.ovs`: real Open vSwitch with the DPDK datapath, one
  instance per host (own ovsdb-server, ``unshare --net``), side by side;
* :mod:`~vhostcompat.lab.probe`: a one-shot GET_FEATURES probe of any backend;
* :mod:`~vhostcompat.lab.commands`: ``vhostcompat proxy`` and ``vhostcompat
  backend`` as child processes;
* :mod:`~vhostcompat.lab.hosts`: a host = a backend (testpmd, reference, any
  factory), optionally behind the proxy, and a QEMU; a source and a destination;
* :mod:`~vhostcompat.lab.ovsdb`: standalone ovsdb-server children (vswitch schema
  or any), one or hundreds at once;
* :mod:`~vhostcompat.lab.story`: the upstream story played once, for the demo
  (on testpmd, and on OVS-DPDK with the host agents);
* :mod:`~vhostcompat.lab.tap`: tap devices for ``-netdev tap`` VMs (down, no address);
* :mod:`~vhostcompat.lab.uso`: the USO story, QEMU 10.0 to 7.2 on taps.
"""
