"""STAN (seeds 000/001): training that skips conv outputs predicted zero, its entry matrix and
timing model, the seed's baselines (meProp, convolutional dropout) and Hyperband tuning.

- ``schedule``: which epochs are dense, build the entry matrix, or skip;
- ``entry``: the entry matrix per training sample, and its memory;
- ``conv``: the STAN conv (sparse-output forward, dense backward, per-layer timings);
- ``baselines``: meProp;
- ``timing``: the seed's timing model;
- ``trainer``: the training loop (sample ids, schedule, timings, report);
- ``hyperband``: optuna's Hyperband over the seed's search spaces.

The graph rewrites live in ``passes/stan.py``.
"""
