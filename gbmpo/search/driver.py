"""Drive an Optuna study with a strategy and an evaluator, from any number of processes.

Strategies
  gbmpo-es  `gbmpo.search.strategies.GbmpoEs`. A generation's candidates are queued as WAITING
            trials that carry their parameters and slot (`es_generation`, `es_slot`); workers pop
            them with the atomic WAITING -> RUNNING transition that `Study.ask` uses for its
            queue, and finish them with `Study.tell`. No strategy state is stored: it is
            replayed from the seed and the told fitnesses, and each trial's stored parameters
            are checked against the replay.
  cmaes     Optuna's CmaEsSampler (separable CMA: 380 dimensions against ~150 evaluations leave
            a full covariance unlearnable) over FloatDistribution(-1, 1) per parameter,
            started at the same phi_0 with sigma0 = sigma, driven by `Study.ask` / `Study.tell`.
            Trials sampled before the first one completes are drawn around phi_0 with sigma.

A failed candidate is COMPLETE with fitness 0 and `es_failed` / `es_reason` user attrs; an
attempt that produced no verdict (interrupted, claimant died) is a FAIL trial with `es_reason`.

Resume and work sharing (journal file, SQLite, or an RDB URL shared by many machines)
- A RUNNING trial whose claimant is gone (same host: its pid no longer runs; other host: no
  heartbeat for `stale_after` seconds) is stale: if the evaluator already has its verdict (a
  finished cell), that is told; otherwise the trial is closed as FAIL and, for gbmpo-es, its
  slot is queued again.
- The queue pop is atomic, so two processes never claim one trial. Should two processes that
  share no search directory queue the same slot twice, only the lowest numbered live trial of a
  slot runs; a later one is closed as a duplicate without running. Processes sharing a search
  directory serialise queueing with a lock file there, so that does not occur.
- A cmaes search may overshoot its budget by the trials other processes asked concurrently.
"""

from __future__ import annotations

import fcntl
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TextIO

import numpy as np
import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState, create_trial

from gbmpo.search.strategies import N_PARAMS, EsState, GbmpoEs, Generation
from gbmpo.search.study import (
    LIVE,
    PARAM_NAMES,
    SearchError,
    SearchSpec,
    distributions,
    owner_gone,
    owner_record,
)


@dataclass(frozen=True)
class Candidate:
    number: int  # Optuna trial number
    key: str  # g000-c00 (gbmpo-es: generation, slot) or t00012 (cmaes: trial number)
    generation: int
    params: np.ndarray


@dataclass(frozen=True)
class Fitness:
    """A verdict on a candidate. `abandoned`: no verdict (interrupted, locked elsewhere); the
    trial is closed as FAIL and the candidate runs again later."""

    value: float
    failed: bool = False
    reason: str | None = None
    abandoned: bool = False
    attrs: dict = field(default_factory=dict)


Report = Callable[[Candidate, Fitness], None]


class Evaluator(Protocol):
    def lookup(self, cand: Candidate) -> Fitness | None:
        """The verdict of an already finished evaluation of `cand`, or None."""

    def evaluate(self, cands: list[Candidate], report: Report) -> None:
        """Evaluate every candidate, calling `report` once for each as soon as it is known."""


class FunctionEvaluator:
    """fitness = fn(params) in this process; for surrogate objectives and tests."""

    def __init__(self, fn: Callable[[np.ndarray], float]) -> None:
        self.fn = fn

    def lookup(self, cand: Candidate) -> Fitness | None:
        return None

    def evaluate(self, cands: list[Candidate], report: Report) -> None:
        for c in cands:
            report(c, Fitness(float(self.fn(c.params))))



# ---- the search ----------------------------------------------------------------------------
class Search:
    """Drives one study until it has `spec.generations` generations. Many Search objects (in
    many processes, on many machines) may drive the same study at once."""

    def __init__(self, study: optuna.Study, spec: SearchSpec, *, search_dir: Path | None = None,
                 batch: int = 1, poll_s: float = 2.0, stale_after: float = 600.0,
                 heartbeat_s: float = 30.0, out: TextIO | None = None) -> None:
        self.study, self.spec, self.batch = study, spec, max(1, batch)
        # Claims and attrs go through the study's own storage object (RDB storages are wrapped
        # in a per-process cache that must see every write); its API is Optuna's public one.
        self.storage = study._storage
        self.study_id = self.storage.get_study_id_from_name(study.study_name)
        self.search_dir, self.poll_s = search_dir, poll_s
        self.stale_after, self.heartbeat_s = stale_after, heartbeat_s
        self.out = out or sys.stdout
        self.owner = owner_record()
        self.es = GbmpoEs(spec.es)
        self.dists = distributions(spec.strategy)
        self._owned: dict[int, int] = {}  # trial id -> number, claimed here and not yet told
        self._lock_owned = threading.Lock()

    # -- public ------------------------------------------------------------------------------
    def run(self, evaluator: Evaluator) -> None:
        with self._heartbeat():
            while True:
                with self._queue_lock():
                    self._recover(evaluator)
                    if self.done():
                        return
                    self._plan()
                cands = self._claim()
                if not cands:
                    time.sleep(self.poll_s)
                    continue
                self._evaluate(evaluator, cands)

    def done(self) -> bool:
        if self.spec.strategy == "gbmpo-es":
            return self.replay()[0].generation >= self.spec.generations
        return len(self._complete()) >= self.spec.es.population * self.spec.generations

    def replay(self) -> tuple[EsState, Generation]:
        """gbmpo-es: the state after every fully told generation, and the next generation."""
        state = self.es.initial()
        slots = self._slots()
        while True:
            gen = self.es.ask(state)
            chosen = []
            for i, x in enumerate(gen.candidates):
                trials = slots.get((gen.index, i), [])
                for t in trials:
                    if len(t.params) == N_PARAMS and not np.array_equal(_params(t), x):
                        raise SearchError(
                            f"trial {t.number} of study {self.study.study_name!r} (generation "
                            f"{gen.index}, slot {i}) holds other parameters than this search "
                            "computes; the study was made by different code or settings")
                done = [t for t in trials if t.state == TrialState.COMPLETE]
                if not done:
                    return state, gen
                chosen.append(done[0])
            state = self.es.tell(state, gen, [t.value for t in chosen],
                                 [bool(t.user_attrs.get("es_failed")) for t in chosen],
                                 [t.user_attrs.get("es_key", "") for t in chosen])

    def history(self) -> list[dict]:
        """One row per finished generation: mean, max, min fitness and the best so far."""
        if self.spec.strategy == "gbmpo-es":
            rows = [dict(r) for r in self.replay()[0].history]
        else:
            done, n = self._complete(), self.spec.es.population
            rows = []
            for g in range(len(done) // n):
                f = np.array([t.value for t in done[g * n:(g + 1) * n]])
                rows.append({"generation": g, "evaluated": n, "failed": sum(
                    bool(t.user_attrs.get("es_failed")) for t in done[g * n:(g + 1) * n]),
                    "mean": float(f.mean()), "max": float(f.max()), "min": float(f.min())})
        best = -math.inf
        for r in rows:
            best = max(best, r["max"])
            r["best_so_far"] = best
        self._add_noise(rows)
        return rows

    def _add_noise(self, rows: list[dict]) -> None:
        """With several RL seeds per candidate (paired: every candidate uses the same seeds),
        each generation's row gets `spread_sd`, the spread of candidate fitness, beside
        `noise_se`, the standard error of one candidate's fitness from its seed-to-seed
        variance (pooled over the generation). A spread below the noise means the search
        cannot tell its candidates apart."""
        done = self._complete()
        n = self.spec.es.population
        for r in rows:
            g = r["generation"]
            trials = ([t for t in done if t.user_attrs.get("es_generation") == g]
                      if self.spec.strategy == "gbmpo-es" else done[g * n:(g + 1) * n])
            per_seed = [t.user_attrs.get("seed_fitness") for t in trials]
            per_seed = [np.asarray(x, float) for x in per_seed if x and len(x) >= 2]
            if len(per_seed) < 2:
                continue
            within = float(np.mean([x.var(ddof=1) for x in per_seed]))
            r["noise_se"] = math.sqrt(within / min(len(x) for x in per_seed))
            r["spread_sd"] = float(np.std([x.mean() for x in per_seed], ddof=1))

    def best_candidate(self) -> FrozenTrial | None:
        done = self._complete()
        return max(done, key=lambda t: (t.value, -t.number)) if done else None

    def result_params(self) -> tuple[np.ndarray, str]:
        if self.spec.strategy == "gbmpo-es":
            return self.replay()[0].phi, "phi: the ES mean after the last generation"
        best = self.best_candidate()
        if best is None:
            raise SearchError("no finished candidate yet")
        return _params(best), f"the best candidate (trial {best.number})"

    # -- internals ---------------------------------------------------------------------------
    def _trials(self, states=None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def _complete(self) -> list[FrozenTrial]:
        return [t for t in self._trials((TrialState.COMPLETE,)) if len(t.params) == N_PARAMS]

    def _slots(self) -> dict[tuple[int, int], list[FrozenTrial]]:
        slots: dict[tuple[int, int], list[FrozenTrial]] = {}
        for t in self._trials():
            if "es_slot" in t.user_attrs:
                slots.setdefault((t.user_attrs["es_generation"], t.user_attrs["es_slot"]),
                                 []).append(t)
        return slots

    def _plan(self) -> None:
        """gbmpo-es: queue every slot of the open generation that has no live trial."""
        if self.spec.strategy != "gbmpo-es":
            return
        _, gen = self.replay()
        slots = self._slots()
        for i, x in enumerate(gen.candidates):
            if any(t.state in LIVE for t in slots.get((gen.index, i), [])):
                continue
            key = f"g{gen.index:03d}-c{i:02d}"
            self.study.add_trial(create_trial(
                state=TrialState.WAITING, params=dict(zip(PARAM_NAMES, x.tolist(), strict=True)),
                distributions=self.dists,
                user_attrs={"es_generation": gen.index, "es_slot": i, "es_key": key}))

    def _claim(self) -> list[Candidate]:
        if self.spec.strategy == "cmaes":
            return self._ask_cma()
        claimed = []
        for t in self._trials((TrialState.WAITING,)):
            if len(claimed) >= self.batch:
                break
            if "es_slot" not in t.user_attrs or not self._pop(t):
                continue
            dup = self._duplicate_of(t)
            if dup is not None:
                self._close(t.number, TrialState.FAIL,
                            {"es_reason": f"duplicate of trial {dup}; not run"})
                continue
            claimed.append(Candidate(t.number, t.user_attrs["es_key"],
                                     t.user_attrs["es_generation"], _params(t)))
        return claimed

    def _tid(self, number: int) -> int:
        return self.storage.get_trial_id_from_study_id_trial_number(self.study_id, number)

    def _pop(self, t: FrozenTrial) -> bool:
        tid = self._tid(t.number)
        try:
            if not self.storage.set_trial_state_values(tid, TrialState.RUNNING):
                return False
        except UpdateFinishedTrialError:
            return False
        self._own(tid, t.number)
        return True

    def _own(self, trial_id: int, number: int) -> None:
        with self._lock_owned:
            self._owned[trial_id] = number
        self.storage.set_trial_user_attr(trial_id, "es_owner", self.owner)
        self.storage.set_trial_user_attr(trial_id, "es_heartbeat", time.time())

    def _duplicate_of(self, t: FrozenTrial) -> int | None:
        slot = (t.user_attrs["es_generation"], t.user_attrs["es_slot"])
        lower = [u.number for u in self._slots().get(slot, [])
                 if u.number < t.number and u.state in LIVE]
        return min(lower) if lower else None

    def _ask_cma(self) -> list[Candidate]:
        n = self.spec.es.population
        running = len(self._trials((TrialState.RUNNING,)))
        room = n * self.spec.generations - len(self._complete()) - running
        cands = []
        for _ in range(min(self.batch, room)):
            # ask first, own it, then sample: the same as ask(fixed_distributions), but a kill
            # while the 380 parameters are sampled leaves a trial whose owner is known
            trial = self.study.ask()
            tid, key = self._tid(trial.number), f"t{trial.number:05d}"
            self._own(tid, trial.number)
            self.storage.set_trial_user_attr(tid, "es_key", key)
            x = np.array([trial.suggest_float(p, d.low, d.high) for p, d in self.dists.items()])
            cands.append(Candidate(trial.number, key, len(self._complete()) // n, x))
        return cands

    def _evaluate(self, evaluator: Evaluator, cands: list[Candidate]) -> None:
        try:
            evaluator.evaluate(cands, self._report)
        finally:  # interrupted or crashed: what was not told runs again later
            left = {c.number for c in cands} & set(self._owned.values())
            for c in cands:
                if c.number in left:
                    self._report(c, Fitness(0.0, abandoned=True,
                                            reason="abandoned: the search was interrupted"))

    def _report(self, cand: Candidate, fit: Fitness) -> None:
        attrs = {**fit.attrs, "es_failed": fit.failed, "es_reason": fit.reason}
        if fit.abandoned:
            self._close(cand.number, TrialState.FAIL, attrs)
        else:
            self._close(cand.number, TrialState.COMPLETE, attrs, fit.value)
            note = f"  FAILED ({fit.reason})" if fit.failed else ""
            print(f"{cand.key} (trial {cand.number}): fitness {fit.value:.4f}{note}",
                  file=self.out, flush=True)

    def _close(self, number: int, state: TrialState, attrs: dict,
               value: float | None = None) -> None:
        """Record attrs, then tell. A trial closed meanwhile by another process (which took
        this one for stale) keeps that verdict."""
        tid = self._tid(number)
        with self._lock_owned:
            self._owned.pop(tid, None)
        try:
            for k, v in attrs.items():
                self.storage.set_trial_user_attr(tid, k, v)
        except UpdateFinishedTrialError:
            print(f"trial {number} was already closed by another process", file=self.out)
            return
        self.study.tell(number, value, state=state, skip_if_finished=True)

    def _recover(self, evaluator: Evaluator) -> None:
        """Close RUNNING trials whose claimant is gone (module docstring)."""
        now = time.time()
        for t in self._trials((TrialState.RUNNING,)):
            owner = t.user_attrs.get("es_owner")
            if owner == self.owner:
                continue
            if owner is None:
                started = t.datetime_start.timestamp() if t.datetime_start else now
                if now - started <= self.stale_after:
                    continue
                why = "claimed but never started"
            elif owner_gone(owner, t.user_attrs.get("es_heartbeat", 0.0), now, self.stale_after):
                why = f"its process {owner['host']}:{owner['pid']} is gone"
            else:
                continue
            cand = _candidate_of(t, self.spec.es.population)
            fit = evaluator.lookup(cand) if cand is not None else None
            if fit is not None:
                self._close(t.number, TrialState.COMPLETE, {
                    **fit.attrs, "es_failed": fit.failed, "es_reason": fit.reason}, fit.value)
            else:
                self._close(t.number, TrialState.FAIL, {"es_reason": f"abandoned: {why}"})

    @contextmanager
    def _queue_lock(self) -> Iterator[None]:
        if self.search_dir is None:
            yield
            return
        self.search_dir.mkdir(parents=True, exist_ok=True)
        with open(self.search_dir / ".es.lock", "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def _heartbeat(self) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.heartbeat_s):
                with self._lock_owned:
                    ids = list(self._owned)
                for tid in ids:
                    try:
                        self.storage.set_trial_user_attr(tid, "es_heartbeat", time.time())
                    except Exception:  # a closed trial, a storage hiccup: next beat retries
                        pass

        thread = threading.Thread(target=beat, name="es-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(5)


def _params(t: FrozenTrial) -> np.ndarray:
    return np.array([t.params[p] for p in PARAM_NAMES], dtype=float)


def _candidate_of(t: FrozenTrial, population: int) -> Candidate | None:
    if len(t.params) != N_PARAMS:
        return None
    key = t.user_attrs.get("es_key", f"t{t.number:05d}")
    return Candidate(t.number, key, t.user_attrs.get("es_generation", -1), _params(t))


