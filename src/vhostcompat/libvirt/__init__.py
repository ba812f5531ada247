"""libvirt integration: the domain ``<metadata>`` that carries each interface's
compatibility version (:mod:`.metadata`), safe reading of domain XML
(:mod:`.domain`) and the qemu hook that refuses a domain this host cannot run
and assigns its interfaces' modes in the host store (:mod:`.hook`)."""
