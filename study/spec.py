"""Sweep files: a TOML file names the study, the fixed RunConfig values, the search space, the objective(s),
the seeds and the evaluation interval. Everything is checked here, before any training starts.

    name = "default"
    sampler = "grid"                  # grid | random | tpe
    trials = 20                       # random/tpe: configurations to sample (each run once per seed)
    timeout_s = 0                     # 0: no time budget; else start no trial after this many seconds
    seeds = [0, 1]                    # each configuration once per seed ([fixed] and --set take no seed)
    sampler_seed = 0                  # random/tpe: each worker's sampler seed is derived from it
    max_retries = 2                   # a failed (not pruned, not killed) condition is queued again this often
    epochs_per_image = 0              # > 0: each cell's budget is this many epochs per image (epochs = this x N)
    weights = "none"                  # none | all: log each trial's generator weights (model/G.pt, MBs a run)
    keep_checkpoints = false          # keep each finished trial's last checkpoint (killed trials resume from it)
    eval_every = 10                   # epochs between pairing evaluations (logged; pruning reads them)
    pruner = "none"                   # none | median
    objectives = ["pair/forward_top1"]
    directions = ["maximize"]
    timing = false                    # a timing study (also any time/* objective): --workers auto runs one trial
                                      # at a time with every thread, so no trial is timed beside another

    [fixed]                           # any RunConfig field
    image_size = 32

    [space]                           # lists are categorical; tables are ranges
    pairing = ["aligned", "fixed", "shuffled"]
    lambda_l1 = { low = 1.0, high = 100.0, log = true }   # log: a TOML boolean
    n_images = { low = 5, high = 20, step = 5 }            # step > 0, and none with log = true
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from analysis.store import safe_part
from cyclelike.config import ConfigError, RunConfig

OBJECTIVE_METRICS = (
    "pair/forward_top1", "pair/backward_top1", "pair/bijectivity", "pair/mutual", "pair/cycle_top1",
    "pair/cycle_top1_lowpass", "pair/margin", "pair/partner_rank",
    "mem/holdout_copy_rate", "mem/holdout_copy_excess", "time/sec_per_epoch", "loss/G_total", "loss/G_l1", "loss/D",
)
TOP_KEYS = {"name", "description", "sampler", "trials", "timeout_s", "seeds", "eval_every", "pruner",
            "objectives", "directions", "fixed", "space", "sampler_seed", "max_retries", "epochs_per_image",
            "weights", "keep_checkpoints", "timing"}
SAMPLERS = ("grid", "random", "tpe")
PRUNERS = ("none", "median")


class SweepError(ValueError):
    """A sweep file or value that cannot run; the message names the key and what is allowed."""


@dataclass
class Range:
    low: float | int
    high: float | int
    log: bool = False
    step: float | int | None = None

    @property
    def is_int(self) -> bool:
        return isinstance(self.low, int) and isinstance(self.high, int) and not isinstance(self.step, float)


@dataclass
class SweepSpec:
    name: str
    fixed: dict[str, Any]
    space: dict[str, list | Range]
    sampler: str = "grid"
    trials: int = 0
    timeout_s: float = 0.0
    seeds: list[int] = field(default_factory=lambda: [0])
    eval_every: int = 10
    pruner: str = "none"
    objectives: list[str] = field(default_factory=lambda: ["pair/forward_top1"])
    directions: list[str] = field(default_factory=lambda: ["maximize"])
    description: str = ""
    source: str = ""
    sampler_seed: int = 0
    max_retries: int = 2
    epochs_per_image: int = 0  # > 0: a budget that grows with N, epochs = epochs_per_image x n_images
    weights: str = "none"  # none | all: whether trials log their generator weights
    keep_checkpoints: bool = False  # a finished trial's checkpoint is deleted unless this is set
    timing: bool = False  # the sweep file says its times are what it measures (see is_timing)

    def _budgeted(self, values: dict[str, Any]) -> dict[str, Any]:
        if self.epochs_per_image:
            values["epochs"] = self.epochs_per_image * values.get("n_images", RunConfig.n_images)
        return values

    def base_config(self) -> RunConfig:
        """The fixed values, and for a key every trial takes from the space, its first value (or low end)."""
        first = {k: v[0] if isinstance(v, list) else v.low for k, v in self.space.items() if k not in self.fixed}
        return RunConfig.from_dict(self._budgeted({**first, **self.fixed}))

    def config_for(self, params: dict[str, Any], seed: int) -> RunConfig:
        return RunConfig.from_dict(self._budgeted({**self.fixed, **params, "seed": seed}))

    @property
    def fixed_key(self) -> str:
        """The identity of what this sweep file holds fixed (the space and the seed aside)."""
        from cyclelike.execution import identity  # it imports torch, which `python -m study --help` need not

        fixed = {k: v for k, v in identity(self.base_config()).items() if k not in self.space}
        return hashlib.sha1(json.dumps(fixed, sort_keys=True, default=str).encode()).hexdigest()[:10]

    def grid_cells(self) -> list[dict[str, Any]]:
        """Every combination of the space's values: the factorial design (ranges are refused for grid)."""
        names = sorted(self.space)
        return [dict(zip(names, values, strict=True)) for values in itertools.product(*(self.space[n] for n in names))]

    def distribution(self, name: str):
        """The Optuna distribution of one dimension of the space."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        dim = self.space[name]
        if isinstance(dim, list):
            return CategoricalDistribution(dim)
        if dim.is_int:
            return IntDistribution(dim.low, dim.high, log=dim.log, step=dim.step or 1)
        return FloatDistribution(dim.low, dim.high, log=dim.log, step=dim.step)

    def suggest(self, trial) -> dict[str, Any]:
        """Ask an Optuna trial for every dimension of the space, in one place."""
        params = {}
        for name in sorted(self.space):
            dim = self.space[name]
            if isinstance(dim, list):
                params[name] = trial.suggest_categorical(name, dim)
            elif dim.is_int:
                params[name] = trial.suggest_int(name, dim.low, dim.high, step=dim.step or 1, log=dim.log)
            else:
                params[name] = trial.suggest_float(name, dim.low, dim.high, step=dim.step, log=dim.log)
        return params

    def check_study(self, study) -> None:
        """Refuse what an existing study cannot absorb, before anything is queued or reopened: other directions,
        objectives or sampler (the study would mix the old values with the new, or fill with spurious draws), and a
        list or range widened (Optuna keeps one distribution per parameter, and every worker would die at its
        first trial)."""
        from optuna.distributions import check_distribution_compatibility

        was = {"directions": [d.name.lower() for d in study.directions], "objectives": study.metric_names,
               "sampler": study.user_attrs.get("sampler")}
        for key, now in (("directions", self.directions), ("objectives", self.objectives), ("sampler", self.sampler)):
            if was[key] is not None and was[key] != now:
                raise SweepError(f"{key}={now!r}: study {self.name!r} was run with {key}={was[key]!r}, and a study "
                                 "keeps them; rename the study in the sweep file (or use another --storage)")

        for t in study.get_trials(deepcopy=False):
            for name, dist in t.distributions.items():
                if name not in self.space:
                    continue
                try:
                    check_distribution_compatibility(dist, self.distribution(name))
                except ValueError:
                    old = list(dist.choices) if hasattr(dist, "choices") else f"{dist.low}..{dist.high}"
                    raise SweepError(f"space.{name}: study {self.name!r} ran it over {old}; Optuna cannot change "
                                     f"the values of a parameter within a study: keep {old}, or give the sweep "
                                     "file a new name") from None

    @property
    def is_timing(self) -> bool:
        """Its times are what it measures: trials timed beside each other would measure the machine's contention."""
        return self.timing or any(m.startswith("time/") for m in self.objectives)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1


def _expect(cond: bool, message: str) -> None:
    if not cond:
        raise SweepError(message)


def _parse_dimension(name: str, value: Any) -> list | Range:
    if isinstance(value, list):
        _expect(len(value) > 0, f"space.{name}: the list is empty; give at least one value")
        return value
    _expect(isinstance(value, dict), f"space.{name}={value!r}: expected a list of values or a table {{low, high}}")
    unknown = set(value) - {"low", "high", "log", "step"}
    _expect(not unknown, f"space.{name}: unknown key(s) {sorted(unknown)}; allowed: low, high, log, step")
    _expect("low" in value and "high" in value, f"space.{name}: a range needs both low and high")
    for key in ("low", "high", "step"):
        number = value.get(key, 0)
        _expect(isinstance(number, int | float) and not isinstance(number, bool) and math.isfinite(number),
                f"space.{name}.{key}={value.get(key)!r}: expected a finite number")
    _expect(isinstance(value.get("log", False), bool),
            f"space.{name}.log={value.get('log')!r}: expected true or false (a TOML boolean, without quotes)")
    dim = Range(value["low"], value["high"], value.get("log", False), value.get("step"))
    _expect(dim.low < dim.high, f"space.{name}: low={dim.low} must be below high={dim.high} (an empty range)")
    _expect(not dim.log or dim.low > 0, f"space.{name}: log=true needs low > 0, got {dim.low}")
    # Optuna refuses these only when a worker asks its first trial for the value, leaving that trial RUNNING
    _expect(dim.step is None or dim.step > 0, f"space.{name}.step={dim.step!r}: expected a number > 0")
    _expect(not dim.log or dim.step is None or (dim.is_int and dim.step == 1),
            f"space.{name}: log=true and step={dim.step!r} cannot go together; Optuna steps only linear ranges")
    return dim


def _check_value(fixed: dict[str, Any], name: str, value: Any) -> None:
    try:
        RunConfig.from_dict({**fixed, name: value})
    except ConfigError as err:
        raise SweepError(f"space.{name}: {err}") from None


def parse_sweep(raw: dict[str, Any], source: str = "", sets: dict[str, Any] | None = None) -> SweepSpec:
    unknown = set(raw) - TOP_KEYS
    _expect(not unknown,
            f"{source}: unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(TOP_KEYS))}")
    _expect(isinstance(raw.get("name"), str) and raw["name"].strip() != "",
            f"{source}: 'name' (the study name) is required")
    # the name is a folder of the store's artifacts and of reports/: it must stay one
    _expect(safe_part(raw["name"].strip()) == raw["name"].strip(),
            f"name={raw['name']!r}: a study name is a folder name in the store; use letters, digits and . _ = + - "
            f"(no /, no leading dot), e.g. {safe_part(raw['name'].strip())!r}")
    for table in ("fixed", "space"):
        _expect(isinstance(raw.get(table, {}), dict),
                f"{table}={raw.get(table)!r}: expected a table ([{table}] with key = value lines)")
    for key, kind, words in (("objectives", (str, list), "a metric name or a list of them"),
                             ("directions", (str, list), "maximize/minimize or a list of them"),
                             ("timeout_s", (int, float), "a number of seconds"), ("description", str, "a string")):
        value = raw.get(key)
        _expect(value is None or (isinstance(value, kind) and not isinstance(value, bool)),
                f"{key}={value!r}: expected {words}")
    for key in ("objectives", "directions"):
        _expect(not isinstance(raw.get(key), list) or all(isinstance(v, str) for v in raw[key]),
                f"{key}={raw.get(key)!r}: expected a list of strings")
    # a sweep repeats each configuration once per seed of its `seeds` list: a fixed seed would be silently ignored
    _expect("seed" not in raw.get("fixed", {}),
            f"fixed.seed={raw.get('fixed', {}).get('seed')!r}: a sweep runs each configuration once per seed of "
            f"the top-level 'seeds' list; write seeds = [{raw.get('fixed', {}).get('seed')}] instead")
    _expect("seed" not in (sets or {}),
            f"--set seed={(sets or {}).get('seed')!r}: a sweep runs each configuration once per seed of the sweep "
            "file's 'seeds' list; change that list (python -m study run --set seed=... trains one seed)")
    fixed = dict(raw.get("fixed", {}))
    fixed.update(sets or {})
    for name, value in fixed.items():
        if isinstance(value, str) and "$" in value:
            expanded = os.path.expandvars(value)
            _expect("$" not in expanded, f"fixed.{name}={value!r}: the environment variable is not set; "
                    f"export it or give --set {name}=...")
            fixed[name] = expanded
    space_raw = dict(raw.get("space", {}))
    both = sorted(set(raw.get("fixed", {})) & set(space_raw))
    _expect(not both, f"{', '.join(both)}: set in both [fixed] and [space]; keep one (--set pins a swept value)")
    for name, value in space_raw.items():
        _expect(not isinstance(value, list) or all(isinstance(v, str | int | float | bool) for v in value),
                f"space.{name}={value!r}: expected a list of plain values (a nested list or table is no value)")
    known = RunConfig.field_help()
    # a value every trial takes from the space (x_path for a study over two files) completes [fixed] here
    swept = {k: v[0] for k, v in space_raw.items() if k in known and k not in fixed and isinstance(v, list) and v}
    try:
        RunConfig.from_dict({**swept, **fixed})
    except ConfigError as err:
        raise SweepError(f"fixed: {err}") from None
    for name in sets or {}:
        space_raw.pop(name, None)  # --set pins a value the file would have swept
    space = {}
    for name, value in space_raw.items():
        _expect(name != "seed", "space.seed: use the top-level 'seeds' list to repeat configurations")
        _expect(name in known, f"space.{name}: unknown RunConfig key; known keys: {', '.join(sorted(known))}")
        space[name] = _parse_dimension(name, value)
        if isinstance(space[name], list):
            for v in space[name]:
                _check_value({**swept, **fixed}, name, v)
        else:
            for v in (space[name].low, space[name].high):
                _check_value(fixed, name, v)
    sampler = raw.get("sampler", "grid")
    _expect(sampler in SAMPLERS, f"sampler={sampler!r}: allowed values are {', '.join(SAMPLERS)}")
    if sampler == "grid":
        ranges = [n for n, d in space.items() if isinstance(d, Range)]
        _expect(not ranges, f"space.{', '.join(ranges)}: sampler=grid needs lists of values, not ranges")
    pruner = raw.get("pruner", "none")
    _expect(pruner in PRUNERS, f"pruner={pruner!r}: allowed values are {', '.join(PRUNERS)}")
    objectives = raw.get("objectives", ["pair/forward_top1"])
    objectives = [objectives] if isinstance(objectives, str) else list(objectives)
    _expect(len(objectives) > 0, "objectives: give at least one metric")
    for m in objectives:
        _expect(m in OBJECTIVE_METRICS, f"objectives: {m!r} is not a metric; allowed: {', '.join(OBJECTIVE_METRICS)}")
    directions = raw.get("directions", ["maximize"] * len(objectives))
    directions = [directions] if isinstance(directions, str) else list(directions)
    _expect(len(directions) == len(objectives),
            f"directions: {len(directions)} given for {len(objectives)} objectives; give one per objective")
    for d in directions:
        _expect(d in ("maximize", "minimize"), f"directions: {d!r}; allowed values are maximize, minimize")
    _expect(not (pruner != "none" and len(objectives) > 1),
            "pruner: multi-objective studies cannot prune in Optuna; use pruner = \"none\"")
    seeds = raw.get("seeds", [0])
    _expect(isinstance(seeds, list) and seeds and all(isinstance(s, int) for s in seeds),
            f"seeds={seeds!r}: expected a non-empty list of integers")
    _expect(len(set(seeds)) == len(seeds), f"seeds={seeds!r}: repeated seed")
    trials = raw.get("trials", 0)
    _expect(isinstance(trials, int) and trials >= 0, f"trials={trials!r}: expected an integer >= 0")
    _expect(sampler == "grid" or trials > 0 or raw.get("timeout_s", 0) > 0,
            f"trials: sampler={sampler} needs trials > 0 or a timeout_s budget")
    eval_every = raw.get("eval_every", 10)
    _expect(isinstance(eval_every, int) and eval_every >= 0, f"eval_every={eval_every!r}: expected an integer >= 0")
    stops = {fixed.get("stop", "off"), *(space.get("stop", []) if isinstance(space.get("stop"), list) else [])}
    _expect(eval_every > 0 or "locked" not in stops,
            "eval_every=0: stop=locked decides at the pairing evaluations; give eval_every > 0")
    sampler_seed = raw.get("sampler_seed", 0)
    _expect(isinstance(sampler_seed, int) and sampler_seed >= 0,
            f"sampler_seed={sampler_seed!r}: expected an integer >= 0")
    max_retries = raw.get("max_retries", 2)
    _expect(isinstance(max_retries, int) and max_retries >= 0,
            f"max_retries={max_retries!r}: expected an integer >= 0")
    per_image = raw.get("epochs_per_image", 0)
    _expect(isinstance(per_image, int) and not isinstance(per_image, bool) and per_image >= 0,
            f"epochs_per_image={per_image!r}: expected an integer >= 0")
    _expect(not (per_image and ("epochs" in fixed or "epochs" in space)),
            "epochs_per_image: the budget then is epochs_per_image x n_images; leave epochs out of fixed and space")
    weights = raw.get("weights", "none")
    _expect(weights in ("none", "all"), f"weights={weights!r}: allowed values are none, all")
    keep_checkpoints = raw.get("keep_checkpoints", False)
    _expect(isinstance(keep_checkpoints, bool), f"keep_checkpoints={keep_checkpoints!r}: expected true or false")
    timing = raw.get("timing", False)
    _expect(isinstance(timing, bool), f"timing={timing!r}: expected true or false")
    timeout = raw.get("timeout_s", 0)
    _expect(isinstance(timeout, int | float) and timeout >= 0, f"timeout_s={timeout!r}: expected a number >= 0")
    return SweepSpec(raw["name"].strip(), fixed, space, sampler, trials, float(timeout), seeds, eval_every,
                     pruner, objectives, directions, raw.get("description", ""), source, sampler_seed, max_retries,
                     per_image, weights, keep_checkpoints, timing)


def load_sweep(path: str | Path, sets: dict[str, Any] | None = None) -> SweepSpec:
    path = Path(path)
    if path.is_dir():
        raise SweepError(f"sweep file {path} is a folder; give a .toml file (e.g. study/configs/default.toml)")
    if not path.is_file():
        raise SweepError(f"sweep file {path} does not exist")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise SweepError(f"{path}: not valid TOML: {err}") from None
    return parse_sweep(raw, str(path), sets)

