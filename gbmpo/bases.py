"""The embedded base models that ship with the project, verified by checksum.

Why ship weights at all: hundreds of SFT steps at lr 3e-3 amplify float-rounding differences between
CPU kernels, so the same recipe gives a different base on an AVX2 and on an AVX512 machine (final
SFT loss 0.020 against 0.032 for the same 800-step recipe), and RL from the two differed by ten
points of accuracy in every cell. RL from a *given* base is stable across kernels and thread
counts; pretraining is not. So the bases the reference results were made from are part of the
project (`gbmpo/bases/tiny-<key>/`, a few MB each), and `model.name = "tiny"` loads them instead
of pretraining whenever the [pretrain] recipe matches one (`pretrain.source = "auto"`).

Two kinds of tiny base, told apart by where they live and by `base.source` in every result:
- shipped: `gbmpo/bases/tiny-<key>/`, read-only, every file's SHA-256 in its `pretrain.json`;
- local:   `$GBMPO_CACHE/tiny-<key>/`, pretrained on this machine on first use (any recipe
  without a shipped base, or `pretrain.source = "local"`).
`<key>` hashes the recipe only (architecture, data, SFT settings, seed), so a local rebuild of a
shipped recipe has the same key, and `gbmpo-bench pretrain` compares the two.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

SHIPPED_ROOT = Path(__file__).resolve().parent / "bases"
RECORD = "pretrain.json"
WEIGHTS = "model.safetensors"


class BaseModelError(RuntimeError):
    """A shipped base is missing a file or fails its checksum."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def checksums(directory: Path) -> dict[str, str]:
    """SHA-256 of every file of a saved base except its record, by file name."""
    return {p.name: sha256_file(p) for p in sorted(directory.iterdir())
            if p.is_file() and p.name != RECORD and not p.name.startswith(".")}


def shipped_dir(key: str) -> Path:
    return SHIPPED_ROOT / f"tiny-{key}"


def read_record(directory: Path) -> dict[str, Any]:
    return json.loads((directory / RECORD).read_text())


def find_shipped(key: str) -> Path | None:
    """The verified shipped base for `key`, or None when none ships. A shipped base whose files
    do not match their recorded checksums raises BaseModelError (never used silently)."""
    d = shipped_dir(key)
    if not (d / RECORD).is_file():
        return None
    record = read_record(d)
    want = record.get("files") or {}
    if WEIGHTS not in want:
        raise BaseModelError(f"shipped base {d} records no checksum for {WEIGHTS}")
    for name, digest in want.items():
        path = d / name
        got = sha256_file(path) if path.is_file() else "missing"
        if got != digest:
            raise BaseModelError(
                f"shipped base {d.name}: {name} fails its checksum (recorded {digest[:16]}..., "
                f"found {got[:16]}...). The checkout is damaged or the file was edited: restore "
                f"it with `git checkout -- gbmpo/bases/{d.name}`, or set pretrain.source = "
                "\"local\" to pretrain this recipe on this machine instead")
    return d


def shipped_records() -> list[dict[str, Any]]:
    """Every shipped base's record (with its directory name), sorted by seed."""
    if not SHIPPED_ROOT.is_dir():
        return []
    out = []
    for d in sorted(SHIPPED_ROOT.glob("tiny-*")):
        if (d / RECORD).is_file():
            out.append({**read_record(d), "dir": d.name})
    return sorted(out, key=lambda r: (r["config"]["seed"], r["dir"]))


def float_environment() -> dict[str, Any]:
    """What decides CPU float results: torch's kernel family, threads, device and versions."""
    import torch

    env: dict[str, Any] = {
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "threads": torch.get_num_threads(),
    }
    try:
        from importlib import metadata

        env["transformers"] = metadata.version("transformers")
    except Exception:  # noqa: BLE001 - provenance must never fail a run
        env["transformers"] = None
    return env


def identity(directory: Path, source: str) -> dict[str, Any]:
    """What a result records about its base: source, key, seed and weight checksum."""
    record = read_record(directory)
    files = record.get("files") or {}
    digest = files.get(WEIGHTS) or sha256_file(directory / WEIGHTS)
    return {"source": source, "key": record.get("key"), "seed": record["config"]["seed"],
            "sha256": digest, "final_loss": record.get("final_loss"),
            "cpu_capability": record.get("float_env", {}).get("cpu_capability")}


def compare(local: Path, shipped: Path) -> dict[str, Any]:
    """Does a local build equal the shipped base? Weights checksum first; if they differ, the
    largest absolute weight difference and both float environments, which say why."""
    from safetensors.torch import load_file

    a, b = read_record(local), read_record(shipped)
    same = a["files"][WEIGHTS] == b["files"][WEIGHTS]
    out: dict[str, Any] = {"match": same, "local": a.get("float_env", {}),
                           "shipped": b.get("float_env", {}),
                           "local_loss": a.get("final_loss"), "shipped_loss": b.get("final_loss")}
    if not same:
        wa, wb = load_file(str(local / WEIGHTS)), load_file(str(shipped / WEIGHTS))
        out["max_abs_diff"] = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    return out


def explain_mismatch(cmp: dict[str, Any]) -> str:
    """Why a local rebuild may differ from the shipped base, from the two records."""
    loc, shp = cmp["local"], cmp["shipped"]
    diffs = [f"{k}: here {loc.get(k)!r}, shipped {shp.get(k)!r}"
             for k in ("torch", "transformers", "cpu_capability", "threads")
             if loc.get(k) != shp.get(k)]
    lines = ["the weights differ (largest |difference| "
             f"{cmp.get('max_abs_diff', float('nan')):.3g}; final SFT loss here "
             f"{cmp['local_loss']:.4f}, shipped {cmp['shipped_loss']:.4f})."]
    if diffs:
        lines.append("Float environment differences: " + "; ".join(diffs) + ".")
    if loc.get("cpu_capability") != shp.get("cpu_capability"):
        lines.append(f"Pretraining amplifies rounding differences between torch's CPU kernel "
                     f"families; run with ATEN_CPU_CAPABILITY={shp.get('cpu_capability')} "
                     "(possible on a CPU that has it or a newer family) to rebuild it exactly.")
    elif not diffs:
        lines.append("Same recorded float environment: the difference comes from something "
                     "not recorded (BLAS build, OS math library); RL from the shipped base is "
                     "what the reference results use.")
    return " ".join(lines)
