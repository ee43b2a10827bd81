"""kubectl-secgroups: explain, trace, matrix, lint and clone security groups, online or offline.

A thin shell over the pure core (``secgroups``): ``sources`` turns manifest files or a
live cluster into the same ``ClusterFacts``; every command asks ``secgroups.analysis``,
``secgroups.linting`` or ``secgroups.cloning`` and prints the answer with ``render``.
"""
