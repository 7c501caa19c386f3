"""Live logging (run.report_to): streams read back with TensorBoard's own event reader, and the
errors a user meets for an unknown name, a missing package or an unconfigured W&B."""

import dataclasses
import importlib.util
import json

import pytest

from gbmpo import config as C
from gbmpo.reporting import ReporterError, open_reporters, scalars_of, validate_report_to

ROWS = [
    {"kind": "eval", "step": 0, "accuracy": 0.25, "response_tokens_mean": 20.0},
    {"kind": "train", "step": 1, "reward_mean": 0.5, "grad_norm": 1.5, "pairs": 0},
    {"kind": "train", "step": 2, "reward_mean": 0.75, "grad_norm": 0.5, "pairs": 0},
    {"kind": "eval", "step": 2, "accuracy": 0.5, "response_tokens_mean": 18.0},
    {"kind": "eval", "step": 2, "task": "reverse", "accuracy": 0.125},
]


def read_tensorboard(log_dir) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert log_dir.is_dir(), f"no TensorBoard event files: {log_dir} does not exist"
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_scalar_streams_are_named_kind_slash_metric():
    assert scalars_of(ROWS[1]) == {"train/reward_mean": 0.5, "train/grad_norm": 1.5,
                                   "train/pairs": 0.0}
    assert scalars_of(ROWS[4]) == {"eval/reverse/accuracy": 0.125}  # transfer task: own stream
    assert scalars_of({"kind": "eval", "step": 3, "note": "text", "x": None}) == {}


def test_tensorboard_streams_read_back(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (the [test] extra)")
    with open_reporters(["tensorboard"], tmp_path, "cell", {"run": {"seed": 0}}) as rep:
        for row in ROWS:
            rep.log(row)
    streams = read_tensorboard(tmp_path / "tb")
    assert streams["train/reward_mean"] == [(1, 0.5), (2, 0.75)]
    assert streams["train/grad_norm"] == [(1, 1.5), (2, 0.5)]
    assert streams["eval/accuracy"] == [(0, 0.25), (2, 0.5)]
    assert streams["eval/reverse/accuracy"] == [(2, 0.125)]
    assert set(streams) == {"train/reward_mean", "train/grad_norm", "train/pairs",
                            "eval/accuracy", "eval/response_tokens_mean", "eval/reverse/accuracy"}


def test_no_reporters_by_default_writes_nothing(tmp_path):
    rep = open_reporters([], tmp_path, "cell", {})
    rep.log(ROWS[1])
    rep.close()
    rep.close()  # idempotent
    assert list(tmp_path.iterdir()) == []


def test_unknown_and_repeated_names():
    with pytest.raises(ReporterError) as info:
        validate_report_to(["tensorbord"])
    assert str(info.value) == ("run.report_to: unknown reporter 'tensorbord'. Did you mean "
                               "'tensorboard'? Valid choices: mlflow, tensorboard, wandb")
    with pytest.raises(ReporterError, match="^run.report_to lists 'tensorboard' twice$"):
        validate_report_to(["tensorboard", "tensorboard"])


def pretend(monkeypatch, installed: set[str], missing: set[str]) -> None:
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name in missing:
            return None
        if name in installed:
            return importlib.machinery.ModuleSpec(name, None)
        return real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_package_names_the_pip_install(monkeypatch, name):
    pretend(monkeypatch, set(), {name})
    with pytest.raises(ReporterError) as info:
        validate_report_to([name])
    assert str(info.value) == (f"run.report_to includes {name!r} but the {name} package is not "
                               f"installed: pip install {name}")


def test_wandb_needs_a_mode_or_a_login(monkeypatch, tmp_path):
    pretend(monkeypatch, {"wandb"}, set())
    for var in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc login
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    with pytest.raises(ReporterError) as info:
        validate_report_to(["wandb"])
    assert str(info.value) == (
        "run.report_to includes 'wandb' but W&B is not configured: set WANDB_MODE=offline to "
        "log under <out>/wandb without an account (upload later with `wandb sync`), or log in "
        "(WANDB_API_KEY or `wandb login`) for online runs")
    monkeypatch.setenv("WANDB_MODE", "offline")
    validate_report_to(["wandb"])


def test_mlflow_local_store_needs_sqlalchemy_unless_a_tracking_uri_is_set(monkeypatch):
    pretend(monkeypatch, {"mlflow"}, {"sqlalchemy"})
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(ReporterError) as info:
        validate_report_to(["mlflow"])
    assert str(info.value) == (
        "run.report_to includes 'mlflow' with no MLFLOW_TRACKING_URI, and the local store "
        "(SQLite under <out>/mlruns) needs SQLAlchemy, which mlflow-skinny lacks: pip install "
        "mlflow, or set MLFLOW_TRACKING_URI")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://tracking.example:5000")
    validate_report_to(["mlflow"])


def test_wandb_offline_run_holds_every_stream(monkeypatch, tmp_path):
    """wandb has no public reader for offline runs (uploading needs the network), so this
    reads the run file's raw records: stream names and JSON values are stored as text."""
    wandb = pytest.importorskip("wandb", reason="wandb is optional (pip install wandb)")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with open_reporters(["wandb"], tmp_path, "cell", {"run": {"seed": 0}}) as rep:
        for row in ROWS:
            rep.log(row)
    wandb.teardown()  # waits for wandb's service process to write the run file out
    (run_file,) = tmp_path.glob("wandb/offline-run-*/run-*.wandb")
    data = run_file.read_bytes()
    for name in scalars_of(ROWS[1]) | scalars_of(ROWS[3]) | scalars_of(ROWS[4]):
        assert name.encode() in data, name
    assert b"0.75" in data and b"0.125" in data


def test_mlflow_local_store_reads_back(monkeypatch, tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is optional (pip install mlflow)")
    pytest.importorskip("sqlalchemy", reason="the local MLflow store needs the full mlflow")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with open_reporters(["mlflow"], tmp_path, "cell", {"run": {"seed": 0}}) as rep:
        for row in ROWS:
            rep.log(row)
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("gbmpo-bench").experiment_id])
    history = client.get_metric_history(run.info.run_id, "train/reward_mean")
    assert sorted((m.step, m.value) for m in history) == [(1, 0.5), (2, 0.75)]
    assert run.data.params["run.seed"] == "0" and run.info.run_name == "cell"
    assert run.info.status == "FINISHED"
    assert (tmp_path / "mlruns" / "artifacts").is_dir()


# ---- wired into the trainer ----------------------------------------------------------------
FAST = {
    "pretrain": {"steps": 3, "batch_size": 8},
    "run": {"steps": 2},
    "eval": {"n": 6, "batch_size": 6},
    "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
}
WIRED = "report_to" in {f.name for f in dataclasses.fields(C.RunSection)}


@pytest.mark.skipif(not WIRED, reason="trainer not wired yet")
def test_two_step_cell_curves_read_back_in_tensorboard(tmp_path):
    pytest.importorskip("tensorboard", reason="pip install tensorboard (the [test] extra)")
    from gbmpo.trainer import train

    data = json.loads(json.dumps(FAST))
    data["run"]["report_to"] = ["tensorboard"]
    data["eval"]["transfer"] = {}  # main evaluation only: one eval stream per metric
    train(C.from_dict(data), tmp_path / "cell", progress=False)
    streams = read_tensorboard(tmp_path / "cell" / "tb")
    rows = [json.loads(x) for x in (tmp_path / "cell" / "metrics.jsonl").read_text().splitlines()]
    for kind, metric in (("train", "reward_mean"), ("train", "divergence"),
                         ("train", "grad_norm"), ("eval", "accuracy")):
        want = [(r["step"], r[metric]) for r in rows if r["kind"] == kind and "task" not in r]
        got = streams[f"{kind}/{metric}"]
        assert [s for s, _ in got] == [s for s, _ in want]
        assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    assert [s for s, _ in streams["train/reward_mean"]] == [1, 2]
    assert [s for s, _ in streams["eval/accuracy"]] == [0, 2]
