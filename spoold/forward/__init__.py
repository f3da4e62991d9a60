"""Forwarding the spool upstream: the drain as a pipeline of stages (``read`` -> ``send``
-> ``record``, joined by the one-slot hand-offs of ``handoff``, run by ``drainer``),
the coalescing of operations, the server's limits on them and the presence beacon."""
