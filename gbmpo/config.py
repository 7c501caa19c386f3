"""Run configuration: frozen dataclasses, TOML in and out, strict `--set a.b=value` overrides.

Every field carries a one-line `help` (shown by `gbmpo-bench train --help-config`) and, where a
paper motivates the value, the source. Unknown keys are errors. Plugin names (algorithm,
divergence, task, rollout backend) and their `params` tables are checked against the registries
*before* any model is loaded, so a typo costs milliseconds, not a pretraining run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib


class ConfigError(ValueError):
    """A config problem a user can fix; the message names the key and what is accepted."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass(frozen=True)
class RunSection:
    seed: int = _f(0, "Seed for data order, sampling and initialisation of plugin parameters.")
    steps: int = _f(40, "Number of RL optimizer steps (one rollout batch each).")
    eval_every: int = _f(0, "Evaluate every N steps (0: only before training and at the end).")
    device: str = _f("cpu", "Torch device: cpu, cuda, cuda:N, or auto (cuda when available).")
    dtype: str = _f("float32", "Training dtype: float32 or bfloat16.")
    threads: int = _f(
        0, "torch intra-op threads (0: the cores this process may use minus those other "
        "processes keep busy, re-checked every few seconds; OMP_NUM_THREADS also fixes it).")
    deterministic: bool = _f(True, "torch.use_deterministic_algorithms; same seed, same metrics.")
    save_model: bool = _f(False, "Save the final policy (HF directory) under <out>/model.")
    report_to: list = _f(
        [], "Live logging besides metrics.jsonl: any of tensorboard (event files under "
        "<out>/tb), wandb, mlflow (used when installed and configured). Off by default.")


@dataclass(frozen=True)
class ModelSection:
    name: str = _f(
        "tiny",
        "'tiny' (the embedded model, pretrained on first use and cached) or a HF hub id / local "
        "directory loadable by AutoModelForCausalLM.",
    )
    reference: str = _f("", "Reference model; empty means the same weights as the initial policy.")
    revision: str = _f("", "Hub revision for `name` (ignored for local paths and 'tiny').")


@dataclass(frozen=True)
class PretrainSection:
    """The embedded tiny model: architecture and supervised pretraining (cached by hash)."""

    tasks: list = _f(
        ["arith", "reverse"], "Synthetic tasks whose demonstrations form the SFT corpus. `reverse` "
        "is the retention probe: taught here, never rewarded by RL, scored after training "
        "through eval.transfer (its drop is the cell's forgetting).")
    source: str = _f(
        "auto", "Where the tiny base comes from: 'auto' loads the base shipped with the project "
        "when one matches this recipe (gbmpo/bases/, checked by SHA-256) and pretrains locally "
        "otherwise; 'local' always uses (or pretrains) the copy in the local cache. Not part "
        "of the recipe key.")
    hidden_size: int = _f(128, "Qwen3 hidden size.")
    num_layers: int = _f(4, "Qwen3 decoder layers.")
    num_heads: int = _f(4, "Attention heads.")
    num_kv_heads: int = _f(2, "Key/value heads (grouped-query attention).")
    intermediate_size: int = _f(384, "MLP width.")
    steps: int = _f(
        1000, "SFT optimizer steps (1000 on arith + reverse: 800 converged on arith alone, final "
        "loss ~0.02, and arith keeps that share of steps; at 600 arith alone is still "
        "undertrained and RL from it does not help).")
    batch_size: int = _f(64, "SFT sequences per step.")
    lr: float = _f(3e-3, "SFT peak learning rate (AdamW, cosine decay, 5% warmup).")
    seed: int = _f(0, "SFT seed (independent of run.seed so every cell shares one base).")
    slip_rate: float = _f(
        0.6, "Chance that a demonstration step prone to the task's systematic error is written "
        "wrongly (arith: an addition that carries drops the carry). 0.6 gives a base that is "
        "mostly wrong on carrying, yet samples the right carry 40% of the time: room for RL.")


@dataclass(frozen=True)
class TaskSection:
    name: str = _f("arith", "Task name; `gbmpo-bench list tasks` shows the choices.")
    params: dict = _f({}, "Task constructor parameters (e.g. path, num_fewshot).")


@dataclass(frozen=True)
class AlgorithmSection:
    name: str = _f("dr_grpo", "Algorithm; `gbmpo-bench list algorithms` shows the choices.")
    params: dict = _f({}, "Algorithm parameters (e.g. clip_eps); checked against its signature.")


@dataclass(frozen=True)
class DivergenceSection:
    name: str = _f("kl_k3", "Divergence; `gbmpo-bench list divergences` shows the choices.")
    beta: float = _f(
        0.04,
        "Coefficient of the per-token penalty (0.04: TRL/DeepSeekMath GRPO default; GBMPO uses "
        "1e-4 for ProbL2 and the neural mirror map).",
    )
    params: dict = _f({}, "Divergence parameters (e.g. params_path for neural_mirror).")
    target_kl: float = _f(
        0.0, "Matched budget: > 0 adapts beta every step so that the training batch's per-token "
        "KL(pi || pi_0) approaches this value (Ziegler et al. 2019 proportional controller; "
        "beta starts at divergence.beta and is logged per step); 0 keeps beta fixed.")
    kl_horizon: float = _f(
        2.0, "Adaptive beta: steps over which a KL error is corrected; beta moves at most "
        "20%/kl_horizon per step (verl's horizon, counted in RL steps).")


@dataclass(frozen=True)
class ReferenceSection:
    update_every: int = _f(
        0, "Reset the reference to the current policy every K steps (RPG §5); 0 keeps it fixed."
    )


@dataclass(frozen=True)
class RolloutSection:
    backend: str = _f("hf", "Generation backend: hf (transformers generate) or vllm.")
    prompts_per_step: int = _f(8, "Distinct prompts per RL step (P).")
    samples_per_prompt: int = _f(8, "Completions per prompt, the group size (G).")
    max_new_tokens: int = _f(64, "Completion length cap; longer samples are flagged truncated.")
    temperature: float = _f(1.0, "Sampling temperature (also applied to training logits).")
    top_p: float = _f(1.0, "Nucleus sampling mass.")
    params: dict = _f({}, "Backend parameters (e.g. gpu_memory_utilization for vllm).")


@dataclass(frozen=True)
class OptimSection:
    lr: float = _f(
        5e-5, "AdamW learning rate for RL (5e-5 for the tiny model; 3e-4 makes 40 steps of "
        "dr_grpo + kl_k3 stall; see the README's findings).")
    weight_decay: float = _f(0.0, "AdamW weight decay.")
    grad_clip: float = _f(1.0, "Global gradient-norm clip (0 disables).")
    updates_per_batch: int = _f(
        1, "Optimizer steps per rollout batch (mu); >1 makes the update off-policy."
    )
    micro_batch_size: int = _f(
        0, "Sequences per forward/backward (gradient accumulation; the loss is identical); "
        "0: the whole batch at once.")
    schedule: str = _f("constant", "Learning-rate schedule: constant or cosine (to 0).")
    warmup_ratio: float = _f(0.0, "Fraction of optimizer steps with linear warmup.")
    betas: list = _f([0.9, 0.999], "AdamW betas.")
    eps: float = _f(1e-8, "AdamW epsilon.")


@dataclass(frozen=True)
class EvalSection:
    split: str = _f("test", "Held-out split used for the final (and periodic) evaluation.")
    n: int = _f(200, "Examples evaluated (the first n of the split, fixed order).")
    max_new_tokens: int = _f(0, "Evaluation generation cap (0: same as rollout.max_new_tokens).")
    batch_size: int = _f(100, "Prompts per generate call during evaluation.")
    samples: int = _f(
        16, "K sampled completions per evaluation prompt at the rollout temperature, for "
        "unbiased pass@k (k = 1, 2, 4, ..., K), mean@K and the drift from pi_0; 0 turns the "
        "sampled evaluation (and the drift metrics) off.")
    seed: int = _f(
        0, "Seed of the sampled evaluation. Independent of run.seed, so every cell is scored "
        "on the same sampling stream (common random numbers) and the base's evaluation is "
        "shared by all cells of a base.")
    transfer: dict = _f(
        {}, "Extra evaluation-only tasks after training, name -> task params, e.g. "
        "{humaneval = {}} for MBPP -> HumanEval transfer; reported as <name>_accuracy.")


@dataclass(frozen=True)
class RunConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    pretrain: PretrainSection = field(default_factory=PretrainSection)
    task: TaskSection = field(default_factory=TaskSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    divergence: DivergenceSection = field(default_factory=DivergenceSection)
    reference: ReferenceSection = field(default_factory=ReferenceSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    optim: OptimSection = field(default_factory=OptimSection)
    eval: EvalSection = field(default_factory=EvalSection)

    # ---- conversions -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    def hash(self) -> str:
        """8 hex digits of the resolved config; equal configs hash equal across machines."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:8]


SECTIONS = {f.name: f.type for f in dataclasses.fields(RunConfig)}


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(RunConfig)
    return {name: hints[name] for name in SECTIONS}


# ---- building ------------------------------------------------------------------------------
def from_dict(data: dict[str, Any], *, validate: bool = True) -> RunConfig:
    """Build a config from nested dicts. Unknown sections/keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a table, got {type(data).__name__}")
    sections = _section_types()
    built = {}
    for sec_name, value in data.items():
        if sec_name not in sections:
            raise ConfigError(_unknown("section", sec_name, sections))
        if not isinstance(value, dict):
            raise ConfigError(f"[{sec_name}] must be a table, got {value!r}")
        built[sec_name] = _build_section(sec_name, sections[sec_name], value)
    cfg = RunConfig(**built)
    if validate:
        validate_config(cfg)
    return cfg


def _build_section(sec_name: str, cls: type, values: dict[str, Any]) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, val in values.items():
        if key not in hints:
            raise ConfigError(_unknown(f"key in [{sec_name}]", key, hints, prefix=f"{sec_name}."))
        kwargs[key] = _coerce(f"{sec_name}.{key}", hints[key], val)
    return cls(**kwargs)


def _coerce(path: str, typ: Any, val: Any) -> Any:
    if typ is bool:
        if isinstance(val, bool):
            return val
    elif typ is int:
        if isinstance(val, int) and not isinstance(val, bool):
            return val
    elif typ is float:
        if isinstance(val, (int, float)) and not isinstance(val, bool):
            return float(val)
    elif typ is str:
        if isinstance(val, str):
            return val
    elif typ is dict:
        if isinstance(val, dict):
            return dict(val)
    elif typ is list:
        if isinstance(val, list):
            return list(val)
    else:  # pragma: no cover - every field uses one of the types above
        return val
    raise ConfigError(f"{path} must be {typ.__name__}, got {val!r} ({type(val).__name__})")


def _unknown(what: str, name: str, valid: Any, prefix: str = "") -> str:
    import difflib

    names = sorted(valid)
    close = difflib.get_close_matches(name, names, n=1)
    hint = f" Did you mean '{prefix}{close[0]}'?" if close else ""
    return f"unknown {what} '{prefix}{name}'.{hint} Valid: {', '.join(names)}"


def read_toml(path: str | Path, what: str = "config", error: type[Exception] = ConfigError):
    """A TOML file as a dict; a missing file or bad TOML raises `error` naming the path."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{what} file {str(p)!r} does not exist")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise error(f"{p}: invalid TOML: {e}") from None


def load(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults <- TOML file <- `a.b=value` overrides, then validation."""
    data: dict[str, Any] = read_toml(path) if path is not None else {}
    data = apply_overrides(data, overrides or [])
    return from_dict(data)


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a', 'b'], value). Values are TOML literals; bare words are strings."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    keys = key.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override key {key!r} must be section.key (e.g. divergence.beta)")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return keys, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        keys, value = parse_override(text)
        set_path(out, keys, value)
    return out


def set_path(data: dict[str, Any], keys: list[str], value: Any) -> None:
    node = data
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set {'.'.join(keys)}: {k!r} is not a table")
    node[keys[-1]] = value


# ---- validation ------------------------------------------------------------------------
def plugin_params(obj: Any) -> dict[str, inspect.Parameter]:
    """Keyword parameters a plugin class accepts (its __init__ signature)."""
    sig = inspect.signature(obj)
    return {
        n: p
        for n, p in sig.parameters.items()
        if n != "self" and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _check_params(section: str, registry: Any, name: str, params: dict[str, Any]) -> None:
    from gbmpo.registry import RegistryError

    try:
        cls = registry.get(name)
    except RegistryError as e:
        raise ConfigError(f"{section}.name: {e}") from None
    accepted = plugin_params(cls)
    for key in params:
        if key not in accepted:
            raise ConfigError(
                _unknown(f"parameter for {section} {name!r}", key, accepted,
                         prefix=f"{section}.params.")
                if accepted
                else f"{section} {name!r} takes no parameters, got {section}.params.{key}"
            )


def validate_config(cfg: RunConfig) -> None:
    """Cross-field checks; fails fast, before any model or data is loaded."""
    from gbmpo.algorithms import ALGORITHMS
    from gbmpo.divergences import DIVERGENCES
    from gbmpo.rollout import BACKENDS
    from gbmpo.tasks import TASKS

    _check_params("algorithm", ALGORITHMS, cfg.algorithm.name, cfg.algorithm.params)
    _check_params("divergence", DIVERGENCES, cfg.divergence.name, cfg.divergence.params)
    _check_params("task", TASKS, cfg.task.name, cfg.task.params)
    _check_params("rollout", BACKENDS, cfg.rollout.backend, cfg.rollout.params)
    for t in cfg.pretrain.tasks:
        if t not in TASKS:
            raise ConfigError(f"pretrain.tasks: {TASKS.unknown_message(t)}")

    algo = ALGORITHMS.get(cfg.algorithm.name)
    if getattr(algo, "owns_regularizer", False) and cfg.divergence.name != "none":
        raise ConfigError(
            f"algorithm {cfg.algorithm.name!r} folds its own KL term into its weight; set "
            f"divergence.name='none' (got {cfg.divergence.name!r}) and choose the KL through "
            f"algorithm.params instead"
        )
    if cfg.divergence.target_kl > 0 and DIVERGENCES.get(cfg.divergence.name).penalty_free:
        raise ConfigError(f"divergence.target_kl needs a divergence with a penalty to steer; "
                          f"{cfg.divergence.name!r} has none")
    checks = [
        (cfg.run.steps >= 0, "run.steps must be >= 0"),
        (cfg.run.dtype in ("float32", "bfloat16"), "run.dtype must be float32 or bfloat16"),
        (cfg.rollout.prompts_per_step >= 1, "rollout.prompts_per_step must be >= 1"),
        (cfg.rollout.samples_per_prompt >= 2, "rollout.samples_per_prompt must be >= 2 "
         "(group-relative advantages need a group)"),
        (cfg.rollout.max_new_tokens >= 1, "rollout.max_new_tokens must be >= 1"),
        (cfg.rollout.temperature > 0, "rollout.temperature must be > 0"),
        (0 < cfg.rollout.top_p <= 1, "rollout.top_p must be in (0, 1]"),
        (cfg.divergence.beta >= 0, "divergence.beta must be >= 0"),
        (cfg.divergence.target_kl >= 0, "divergence.target_kl must be >= 0 (0: fixed beta)"),
        (cfg.divergence.kl_horizon > 0, "divergence.kl_horizon must be > 0"),
        (cfg.divergence.target_kl == 0 or cfg.divergence.beta > 0,
         "divergence.target_kl needs a positive starting divergence.beta to adapt"),
        (cfg.eval.samples >= 0, "eval.samples must be >= 0 (0: no sampled evaluation)"),
        (cfg.optim.lr > 0, "optim.lr must be > 0"),
        (cfg.optim.updates_per_batch >= 1, "optim.updates_per_batch must be >= 1"),
        (cfg.optim.micro_batch_size >= 0, "optim.micro_batch_size must be >= 0"),
        (cfg.optim.schedule in ("constant", "cosine"),
         f"optim.schedule must be constant or cosine, got {cfg.optim.schedule!r}"),
        (0 <= cfg.optim.warmup_ratio < 1, "optim.warmup_ratio must be in [0, 1)"),
        (len(cfg.optim.betas) == 2 and all(0 <= b < 1 for b in cfg.optim.betas),
         "optim.betas must be two numbers in [0, 1)"),
        (cfg.eval.n >= 1, "eval.n must be >= 1"),
        (cfg.reference.update_every >= 0, "reference.update_every must be >= 0"),
        (0 <= cfg.pretrain.slip_rate <= 1, "pretrain.slip_rate must be in [0, 1]"),
        (cfg.pretrain.source in ("auto", "local"),
         f"pretrain.source must be auto or local, got {cfg.pretrain.source!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ConfigError(msg)
    from gbmpo.reporting import ReporterError, validate_report_to

    try:
        validate_report_to(cfg.run.report_to)
    except ReporterError as e:
        raise ConfigError(str(e)) from None
    for name, params in cfg.eval.transfer.items():
        if not isinstance(params, dict):
            raise ConfigError(f"eval.transfer.{name} must be a table of task parameters")
        _check_params("eval.transfer", TASKS, name, params)
        if "test" not in TASKS.get(name).splits:
            raise ConfigError(f"eval.transfer: task {name!r} has no test split")
    task_cls = TASKS.get(cfg.task.name)
    if cfg.eval.split not in task_cls.splits:
        raise ConfigError(
            f"eval.split {cfg.eval.split!r} is not a split of task {cfg.task.name!r}; "
            f"valid: {', '.join(task_cls.splits)}"
        )


def describe() -> str:
    """Every config key with its default and help, for `--help-config`."""
    lines = []
    for sec_name, cls in _section_types().items():
        lines.append(f"[{sec_name}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            lines.append(f"  {f.name} = {json.dumps(default)}\n      {f.metadata.get('help', '')}")
    return "\n".join(lines)


# ---- TOML writing (stdlib has a reader only) ---------------------------------------------
def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        if isinstance(v, float) and v != v:
            return "nan"
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot write {type(v).__name__} to TOML")


def _toml_key(k: str) -> str:
    return k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)


def dumps_toml(data: dict[str, Any]) -> str:
    """Two-level TOML writer: top-level scalars, then one [table] per nested dict."""
    out = [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    for k, v in data.items():
        if isinstance(v, dict):
            if out:
                out.append("")
            out.append(f"[{_toml_key(k)}]")
            out += [f"{_toml_key(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(out) + "\n"
