"""docs/results.md documents every key of result.json, and nothing that is not written.

"Documented" means: a row of the Markdown table in docs/results.md whose header is
`| key | present | meaning |`. The key cell holds one backticked key: a top-level key
(`status`), a metric (`metrics.accuracy`) or a provenance field (`provenance.git_hash`); `<...>`
stands for any text (`metrics.pass@<k>`). The present cell says when the key is written:
`always`, a comma-separated list of statuses (`completed`, `diverged`, `failed`, `timeout`), or
text starting with `only` (a condition; such keys are documented but never required).

Checked against real files: a completed 2-step cell and a diverged one written by the trainer
(each alone and as stamped by the grid runner) and the results the grid runner writes for
failed and timed-out cells.
"""

import fnmatch
import json
import re
from pathlib import Path

import pytest

from gbmpo import config as C

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "results.md"
HEADER = ["key", "present", "meaning"]
STATUSES = ("completed", "diverged", "failed", "timeout")
FAST = {
    "pretrain": {"steps": 3, "batch_size": 8},
    "run": {"steps": 2},
    "eval": {"n": 6, "batch_size": 6},
    "rollout": {"prompts_per_step": 2, "samples_per_prompt": 4, "max_new_tokens": 16},
    "divergence": {"name": "kl_k1", "beta": 0.5},  # a policy and a penalty term at step 1
}


def key_table(text: str) -> dict[str, set[str]]:
    """documented key -> the statuses whose results must contain it (empty: conditional)."""
    lines = text.splitlines()
    # cells split at unescaped pipes (`\|` is a literal pipe in Markdown tables)
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
             for line in lines]
    start = next((i for i, row in enumerate(cells)
                  if lines[i].lstrip().startswith("|") and [c.lower() for c in row] == HEADER),
                 None)
    if start is None:
        pytest.fail(f"{DOC.relative_to(ROOT)} has no key table: add a Markdown table with the "
                    f"header `| key | present | meaning |` listing every result.json key (see "
                    f"the docstring of tests/test_docs.py)", pytrace=False)
    table: dict[str, set[str]] = {}
    for line, row in zip(lines[start + 2:], cells[start + 2:], strict=False):
        if not line.lstrip().startswith("|"):
            break
        key = re.search(r"`([^`]+)`", row[0])
        assert key and len(row) == 3, f"malformed key-table row: {line!r}"
        present = row[1].strip().lower()
        if present == "always":
            statuses = set(STATUSES)
        elif present.startswith("only"):
            statuses = set()
        else:
            statuses = {s.strip() for s in present.split(",")}
            unknown = statuses - set(STATUSES)
            assert not unknown, (f"{key.group(1)}: present must be 'always', 'only ...' or "
                                 f"statuses from {STATUSES}; got {row[1]!r}")
        assert key.group(1) not in table, f"{key.group(1)} is documented twice"
        table[key.group(1)] = statuses
    assert table, "the key table has no rows"
    return table


def keys_of(result: dict) -> set[str]:
    """Top-level keys, plus metrics.<name> and provenance.<name>."""
    out = set(result)
    for section in ("metrics", "provenance"):
        out |= {f"{section}.{k}" for k in result.get(section) or {}}
    return out


def pattern(documented: str) -> str:
    return re.sub(r"<[^>]+>", "*", documented)


def check(result: dict, where: str) -> None:
    table = key_table(DOC.read_text())
    actual = keys_of(result)
    undocumented = sorted(k for k in actual
                          if not any(fnmatch.fnmatchcase(k, pattern(d)) for d in table))
    missing = sorted(d for d, statuses in table.items() if result["status"] in statuses
                     and not any(fnmatch.fnmatchcase(k, pattern(d)) for k in actual))
    problems = []
    if undocumented:
        problems.append(f"written but not in the key table of docs/results.md: {undocumented}")
    if missing:
        problems.append(f"documented as present in every {result['status']} result but not "
                        f"written: {missing}")
    if problems:
        pytest.fail(f"{where}: " + "; ".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def grid_cell():
    from bench.grid import expand, load_grid

    grid = load_grid(ROOT / "bench" / "grids" / "smoke.toml")
    return grid, expand(grid)[0]


def test_completed_cell_matches_the_doc(tmp_path, grid_cell):
    from bench.runner import stamp
    from gbmpo.trainer import train

    result = train(C.from_dict(json.loads(json.dumps(FAST))), tmp_path / "cell", progress=False)
    assert result["status"] == "completed"
    check(result, "a completed cell written by the trainer")
    grid, cell = grid_cell
    stamp(grid, cell, tmp_path / "cell", result, force=True)
    stamped = json.loads((tmp_path / "cell" / "result.json").read_text())
    check(stamped, "a completed cell as the grid runner leaves it")


def test_diverged_cell_matches_the_doc(tmp_path, grid_cell, monkeypatch):
    """A penalty that turns non-finite at step 2 (after the step-1 contract check passed): the
    trainer stops with a non-finite loss and writes a diverged result."""
    import gbmpo.trainer as T
    from bench.runner import stamp
    from gbmpo.divergences.kl import KLk1

    step = [0]
    rl_step, per_token = T._rl_step, KLk1.per_token

    def counted(cfg, n, *args, **kwargs):
        step[0] = n
        return rl_step(cfg, n, *args, **kwargs)

    def nan_from_step_2(self, view):
        d = per_token(self, view)
        return d if step[0] < 2 else d * float("nan")

    monkeypatch.setattr(T, "_rl_step", counted)
    monkeypatch.setattr(KLk1, "per_token", nan_from_step_2)
    fast = json.loads(json.dumps(FAST))
    fast["run"]["steps"] = 3  # the last step checks the plugins again; step 2 does not
    result = T.train(C.from_dict(fast), tmp_path / "cell", progress=False)
    assert (result["status"], result["diverged_step"]) == ("diverged", 2), result["reason"]
    check(result, "a diverged cell written by the trainer")
    grid, cell = grid_cell
    stamp(grid, cell, tmp_path / "cell", result, force=True)
    stamped = json.loads((tmp_path / "cell" / "result.json").read_text())
    check(stamped, "a diverged cell as the grid runner leaves it")


@pytest.mark.parametrize("status", ["failed", "timeout"])
def test_runner_written_results_match_the_doc(grid_cell, status):
    from bench.executors import Outcome
    from bench.runner import failure_result

    grid, cell = grid_cell
    outcome = Outcome(returncode=None if status == "timeout" else 1,
                      timed_out=status == "timeout", wall_s=1.0)
    check(failure_result(grid, cell, status, "reason", outcome, "last lines"),
          f"a {status} result written by the grid runner")


def test_the_json_example_uses_documented_keys():
    text = DOC.read_text()
    block = re.search(r"## `result\.json`.*?```json\n(.*?)```", text, re.S)
    assert block, "docs/results.md has no ```json example under its `result.json` heading"
    example = json.loads(block.group(1))
    table = key_table(text)
    undocumented = sorted(k for k in keys_of(example)
                          if not any(fnmatch.fnmatchcase(k, pattern(d)) for d in table))
    assert not undocumented, f"the JSON example shows keys the table does not: {undocumented}"
