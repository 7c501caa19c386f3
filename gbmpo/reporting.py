"""Live training logs (`run.report_to`): TensorBoard, Weights & Biases, MLflow.

`metrics.jsonl` stays the record a result is built from; reporters are a live view of the same
rows for people watching a long run, as TRL's and verl's `report_to` are. Every numeric value of
a row becomes one scalar stream named `<kind>/<metric>` (`train/reward_mean`, `eval/accuracy`)
at the row's `step`; rows that carry a `task` (evaluation-only transfer tasks) are named
`<kind>/<task>/<metric>` so they do not overwrite the main evaluation's curves.

- tensorboard: event files written offline under `<out>/tb` (`tensorboard --logdir <out>/tb`);
  needs the `tensorboard` package.
- wandb: needs the `wandb` package and a configuration: WANDB_MODE (`offline` writes under
  `<out>/wandb` without an account or network; `wandb sync` uploads later) or a login
  (WANDB_API_KEY / `wandb login`). Project from WANDB_PROJECT (default "gbmpo-bench").
- mlflow: needs the `mlflow` package; tracking URI from MLFLOW_TRACKING_URI, else a local store
  under `<out>/mlruns`: SQLite `mlflow.db` and `artifacts/` (MLflow 3 refuses its old file
  store by default; `mlflow ui --backend-store-uri sqlite:///<out>/mlruns/mlflow.db`).
  Experiment from MLFLOW_EXPERIMENT_NAME (default "gbmpo-bench").
A reporter is created only when named; an unknown name or a missing package is an error before
training starts (`validate_report_to`), never a silently missing curve.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar

from gbmpo.registry import Registry


class ReporterError(ValueError):
    """A `run.report_to` entry that cannot be honoured; the message says what to do."""


class Backend:
    """One destination. Subclasses register with `@REPORTERS.register(name)`; the constructor
    takes (out_dir, run_name, config) and opens the run."""

    package: ClassVar[str]  # the pip package it needs

    @classmethod
    def check(cls) -> None:
        """Raise ReporterError if this backend cannot run here; called before training."""
        if importlib.util.find_spec(cls.package) is None:
            raise ReporterError(
                f"run.report_to includes {cls.registry_name!r} but the {cls.package} package "
                f"is not installed: pip install {cls.package}")

    def log(self, scalars: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


REPORTERS: Registry[type[Backend]] = Registry("reporter")


def scalars_of(row: dict[str, Any]) -> dict[str, float]:
    """A metrics.jsonl row as {stream name: value}; non-numeric values are left out."""
    prefix = row["kind"] + (f"/{row['task']}" if isinstance(row.get("task"), str) else "")
    return {f"{prefix}/{k}": float(v) for k, v in row.items()
            if k not in ("kind", "step", "task") and isinstance(v, (int, float))}


def validate_report_to(report_to: Iterable[str]) -> None:
    """Fail fast (before any model loads) on unknown or repeated names, missing packages, and
    an unconfigured W&B."""
    seen: set[str] = set()
    for name in report_to:
        if name not in REPORTERS:
            raise ReporterError(f"run.report_to: {REPORTERS.unknown_message(name)}")
        if name in seen:
            raise ReporterError(f"run.report_to lists {name!r} twice")
        seen.add(name)
        REPORTERS.get(name).check()


class Reporter:
    """Sends every metrics row to the opened backends. Use as a context manager or call
    `close()` (idempotent); with no backends it does nothing."""

    def __init__(self, backends: list[Backend]) -> None:
        self._backends = backends

    def log(self, row: dict[str, Any]) -> None:
        scalars = scalars_of(row)
        if scalars:
            for b in self._backends:
                b.log(scalars, int(row["step"]))

    def close(self) -> None:
        backends, self._backends = self._backends, []
        for b in backends:
            b.close()

    def __enter__(self) -> Reporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_reporters(report_to: list[str], out_dir: Path, run_name: str,
                   config: dict[str, Any]) -> Reporter:
    """Open one backend per name of `report_to` for the run in `out_dir` (named run_name, with
    its resolved config attached where the backend keeps one)."""
    validate_report_to(report_to)
    out_dir = Path(out_dir)
    backends: list[Backend] = []
    try:
        for name in report_to:
            backends.append(REPORTERS.get(name)(out_dir, run_name, config))
    except BaseException:
        Reporter(backends).close()
        raise
    return Reporter(backends)


# ---- backends ---------------------------------------------------------------------------
@REPORTERS.register("tensorboard")
class TensorBoard(Backend):
    """Event files under <out>/tb, flushed after every row so `tensorboard` shows them live."""

    package = "tensorboard"

    def __init__(self, out_dir: Path, run_name: str, config: dict) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(out_dir / "tb"))
        text = json.dumps(config, indent=1, default=str)
        self.writer.add_text("config", "    " + text.replace("\n", "\n    "), 0)

    def log(self, scalars: dict[str, float], step: int) -> None:
        for name, value in scalars.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


@REPORTERS.register("wandb")
class WandB(Backend):
    """A W&B run (online or offline per WANDB_MODE) with the resolved config."""

    package = "wandb"

    @classmethod
    def check(cls) -> None:
        super().check()
        if os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"):
            return
        try:
            if netrc.netrc().authenticators("api.wandb.ai") is not None:  # `wandb login`
                return
        except (OSError, netrc.NetrcParseError):
            pass
        raise ReporterError(
            "run.report_to includes 'wandb' but W&B is not configured: set WANDB_MODE=offline "
            "to log under <out>/wandb without an account (upload later with `wandb sync`), or "
            "log in (WANDB_API_KEY or `wandb login`) for online runs")

    def __init__(self, out_dir: Path, run_name: str, config: dict) -> None:
        import wandb

        out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=os.environ.get("WANDB_PROJECT", "gbmpo-bench"),
                              name=run_name, config=config, dir=str(out_dir))

    def log(self, scalars: dict[str, float], step: int) -> None:
        self.run.log(scalars, step=step)  # rows come in non-decreasing step order

    def close(self) -> None:
        self.run.finish()


@REPORTERS.register("mlflow")
class MLflow(Backend):
    """An MLflow run with the config as flattened params and as config.json."""

    package = "mlflow"

    @classmethod
    def check(cls) -> None:
        super().check()
        if not os.environ.get("MLFLOW_TRACKING_URI") and \
                importlib.util.find_spec("sqlalchemy") is None:
            raise ReporterError(
                "run.report_to includes 'mlflow' with no MLFLOW_TRACKING_URI, and the local "
                "store (SQLite under <out>/mlruns) needs SQLAlchemy, which mlflow-skinny lacks: "
                "pip install mlflow, or set MLFLOW_TRACKING_URI")

    def __init__(self, out_dir: Path, run_name: str, config: dict) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        uri, artifacts = os.environ.get("MLFLOW_TRACKING_URI"), None
        if not uri:
            root = (out_dir / "mlruns").resolve()
            root.mkdir(parents=True, exist_ok=True)
            uri, artifacts = f"sqlite:///{root / 'mlflow.db'}", (root / "artifacts").as_uri()
        self.client = MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "gbmpo-bench")
        exp = self.client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self.client.create_experiment(
            name, artifact_location=artifacts)
        self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
        params = [Param(k, v) for k, v in _flatten(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=params[i: i + 100])
        self.client.log_dict(self.run_id, config, "config.json")

    def log(self, scalars: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step)
                                                    for k, v in scalars.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in config.items():
        if isinstance(v, dict) and v and prefix == "":
            out.update(_flatten(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v if isinstance(v, str) else json.dumps(v, default=str)
    return out
