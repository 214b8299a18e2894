"""Micro-benchmark of mpilock against a raw MPI round trip and mpi4py's RMA mutex.

Run it under MPI with at least two ranks (``make bench`` uses four)::

    mpiexec -n 4 python -m mpi4py -m mpilock.bench

Rank 0 is the master (it runs the lock server thread), rank 1 is the client of
the uncontended phases.  Rank 0 prints one table: each figure is a median over
repeats, shown with its ratio to the *floor* (a pickled mpi4py ``send``/``recv``
round trip between rank 1 and the master, measured in the same run) and, where
the issue sets one, a target with PASS/MISS.

Ranks that take no part in a phase wait in :func:`~.common.quiet_barrier` (a
non-blocking barrier tested between short sleeps), so they neither burn a core
nor disturb the measurement on an oversubscribed machine.  ``--switch-interval``
sets :func:`sys.setswitchinterval` on every rank, to study how the GIL bounds
grant latency while the master's application thread computes.

The modules, one family of phases each:

- :mod:`.common`: the ranks, the barriers, :class:`~.common.Row` and
  :func:`~.common.sample_on`, the one way a phase runs on some ranks and brings
  its samples to all;
- :mod:`.floor`: the floor round trip, the server's work per request (its
  ceiling) and mpi4py's ``Mutex``;
- :mod:`.quiet`: locks taken alone: ``uncontended``, ``idle``, ``waiting``
  and ``sporadic`` (now and then, with the server idle in between);
- :mod:`.busy`: a master that computes (``busy``) and a dedicated server
  (``dedicated``);
- :mod:`.contended`: every rank locking at once (``contended``) and the
  throughput loop the keyed phases share;
- :mod:`.payloads`: ``share``/``collect`` of big payloads against a raw transfer
  (``payload``), with :mod:`.memory` for the RSS figures;
- :mod:`.keys`: keyed locks: ``keyed`` (a key seen before and a fresh key,
  next to ``write()``), ``sites`` (acquire sites on and off), ``own-keys``
  (every rank its own key, next to one shared), ``bounded`` and ``million``
  (1,000,000 distinct keys locked once, then the master's lock table and RSS);
- :mod:`.threads`: many threads per rank (``threads``) and the interrupt
  ``storm``;
- :mod:`.table`: the printed table (one loop, or both side by side) and its targets;
- :mod:`.cli`: the phase list, :func:`~.cli.run` and the command line
  (``python -m mpilock.bench``).
"""
