"""STAN (seeds 000/001): training that skips conv outputs predicted zero, its entry matrix and
timing model, the seed's baselines (meProp, convolutional dropout) and Hyperband tuning.

- ``schedule``: which epochs are dense, build the entry matrix, or skip;
- ``entry``: the entry matrix per training sample, and its memory;
- ``conv``: the STAN conv (sparse-output forward, dense backward, per-layer timings);
- ``baselines``: meProp;
- ``timing``: the seed's timing model;
- ``trainer``: the training loop (sample ids, schedule, timings, report);
- ``hyperband``: optuna's Hyperband over the seed's search spaces;
- ``rewrite``: the graph rewrites (to STAN layers for training, and back).

It runs while a model trains (``sparsify train --stan``, ``sparsify tune-hparams``), so it has
no plan and no options of the main job.
"""

from ...technique import Technique, register

TECHNIQUE = register(Technique(name="stan", summary="skipping activations predicted zero in training", stage="training"))
