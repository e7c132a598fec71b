"""An optuna sampler and Hyperband pruner whose choices for a trial depend on its *slot*, not on
optuna's trial number, so a study killed and resumed draws the points and prunes the trials of
one that was never interrupted.

A trial's slot is its place among the trials that are not retries; a retry of an interrupted
trial (user attribute ``retry_of``) takes the slot of the trial it repeats. The sampler draws each
parameter from a generator seeded with (seed, slot, parameter name), and the pruner puts a trial
in the Hyperband bracket of its slot and leaves failed (interrupted) trials out of every rung.
A study of 5 trials whose trial 2 was killed holds trials 0 1 2(failed) 3(retry of 2) 4 5 with
slots 0 1 2 2 3 4: the points and brackets of trials 0-4 of an uninterrupted study.
"""

from __future__ import annotations

import hashlib
from types import SimpleNamespace

import optuna
from optuna.trial import TrialState

SLOT = "slot"  # the user attribute a running trial stores its slot in (sampler and pruner read it)


def slot_of(trials: list, trial) -> int:
    """The slot of ``trial`` among ``trials`` (the study's trials, in any state)."""
    by_number = {t.number: t for t in trials}
    seen = set()
    while trial.user_attrs.get("retry_of") in by_number and trial.number not in seen:
        seen.add(trial.number)
        trial = by_number[trial.user_attrs["retry_of"]]
    return sum(1 for t in trials if t.number < trial.number and "retry_of" not in t.user_attrs)


class SlotSampler(optuna.samplers.BaseSampler):
    """Independent uniform (or log-uniform) draws, each a function of (seed, slot, parameter)."""

    def __init__(self, seed: int):
        self.seed = seed

    def infer_relative_search_space(self, study, trial) -> dict:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict:
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):
        # optuna hands a Hyperband study's sampler the trials of one bracket only: the slot
        # comes from the trial (``run_study``'s objective sets it before the first draw).
        slot = trial.user_attrs.get(SLOT)
        if slot is None:
            slot = slot_of(study.get_trials(deepcopy=False), trial)
        key = hashlib.sha256(f"{self.seed}/{slot}/{param_name}".encode()).digest()
        sampler = optuna.samplers.RandomSampler(seed=int.from_bytes(key[:4], "little"))
        return sampler.sample_independent(study, trial, param_name, param_distribution)


class SlotHyperbandPruner(optuna.pruners.HyperbandPruner):
    """optuna's Hyperband with brackets chosen by slot; a failed trial is in no bracket, so the
    rungs an interrupted trial reached do not count against its retry."""

    def _get_bracket_id(self, study, trial) -> int:
        if trial.state == TrialState.FAIL:
            return -1
        return super()._get_bracket_id(study, SimpleNamespace(number=trial.user_attrs.get(SLOT, trial.number)))
