"""Command line: `python -m sandbox isolation` and `python -m sandbox check IN.jsonl`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, TextIO

from sandbox.pool import Pool, detect
from sandbox.result import Isolation, IsolationError, Limits, Suite


def _cmd_isolation(args: argparse.Namespace) -> int:
    rep = detect(args.isolation)
    print(rep.format())
    if args.require_isolation:
        try:
            rep.require(args.require_isolation, "--require-isolation")
        except IsolationError as e:
            print(e, file=sys.stderr)
            return 1
    return 0


class _Progress:
    """A one-line progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total: int, stream: TextIO = sys.stderr) -> None:
        self.total, self.stream, self.done = total, stream, 0
        self.on = stream.isatty()
        self.t0 = time.monotonic()
        self.last = 0.0

    def step(self, passed: bool) -> None:
        self.done += 1
        now = time.monotonic()
        if self.on and (now - self.last > 0.1 or self.done == self.total):
            self.last = now
            width = 30
            filled = int(width * self.done / max(1, self.total))
            rate = self.done / max(1e-9, now - self.t0)
            self.stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] "
                              f"{self.done}/{self.total}  {rate:.1f}/s ")
            self.stream.flush()

    def close(self) -> None:
        if self.on:
            self.stream.write("\n")


_OPTIONAL = {"entry_points": list, "setup": str, "program_setup": str, "in_process": bool}


def _read_jobs(path: str) -> list[dict[str, Any]]:
    jobs = []
    with (sys.stdin if path == "-" else open(path)) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise SystemExit(f"{path}:{n}: not JSON: {e}") from None
            missing = {"program", "tests"} - set(obj)
            if missing or not isinstance(obj.get("tests"), list):
                raise SystemExit(f"{path}:{n}: each line needs \"program\" (str) and \"tests\" "
                                 f"(list of str); missing or wrong: {sorted(missing) or 'tests'}")
            bad = [k for k, t in _OPTIONAL.items() if k in obj and not isinstance(obj[k], t)]
            if bad:
                raise SystemExit(f"{path}:{n}: wrong type for {bad}; optional fields: "
                                 "entry_points (list of str), setup (str), program_setup "
                                 "(str), in_process (bool)")
            try:
                obj["suite"] = Suite(tuple(obj["tests"]), entry_points=obj.get("entry_points"),
                                     setup=obj.get("setup", ""),
                                     program_setup=obj.get("program_setup", ""),
                                     in_process=obj.get("in_process", False))
            except (TypeError, ValueError) as e:
                raise SystemExit(f"{path}:{n}: {e}") from None
            obj.setdefault("id", n)
            jobs.append(obj)
    return jobs


def _cmd_check(args: argparse.Namespace) -> int:
    jobs = _read_jobs(args.input)
    limits = Limits(timeout_s=args.timeout, memory_mb=args.memory_mb)
    out = sys.stdout if args.out in (None, "-") else open(args.out, "w")
    progress = _Progress(len(jobs))
    n_pass = 0
    in_process = []
    try:
        with Pool(args.workers, limits=limits, isolation=args.isolation,
                  require_isolation=args.require_isolation) as pool:
            futures = [pool.submit(j["program"], j["suite"]) for j in jobs]
            for job, fut in zip(jobs, futures, strict=True):
                res = fut.result()
                n_pass += res.passed
                if res.in_process:
                    in_process.append(job["id"])
                out.write(json.dumps({"id": job["id"], **res.to_dict()}) + "\n")
                progress.step(res.passed)
    except IsolationError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        progress.close()
        if out is not sys.stdout:
            out.close()
    print(f"{n_pass}/{len(jobs)} passed", file=sys.stderr)
    if in_process:
        shown = ", ".join(map(str, in_process[:20])) + (" ..." if len(in_process) > 20 else "")
        print(f"{len(in_process)} ran in process (declared fallback: the program could game "
              f"these verdicts): {shown}", file=sys.stderr)
    else:
        print("0 ran in process: every verdict came from the trusted evaluator",
              file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    levels = ", ".join(m.name.lower() for m in Isolation)
    ap = argparse.ArgumentParser(prog="python -m sandbox",
                                 description="Run untrusted Python against tests, isolated.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("isolation", help="detect and print the isolation level and each check")
    p.add_argument("--isolation", default=None, help=f"cap the level ({levels})")
    p.add_argument("--require-isolation", default=None, metavar="LEVEL",
                   help="exit 1 if the detected level is below LEVEL")
    p.set_defaults(fn=_cmd_isolation)
    p = sub.add_parser("check", help="run programs from a JSONL file against their tests")
    p.add_argument("input",
                   help='JSONL, one {"id", "program", "tests": [...]} per line ("-": stdin); '
                        'optional: "entry_points", "setup", "program_setup", "in_process"')
    p.add_argument("--out", default=None, help="output JSONL (default: stdout)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel workers (default: the cores this process may use)")
    p.add_argument("--timeout", type=float, default=Limits.timeout_s,
                   help="wall-clock seconds per program")
    p.add_argument("--memory-mb", type=int, default=Limits.memory_mb, help="memory per process")
    p.add_argument("--isolation", default=None, help=f"cap the level ({levels})")
    p.add_argument("--require-isolation", default=None, metavar="LEVEL",
                   help=f"refuse to run below LEVEL ({levels})")
    p.set_defaults(fn=_cmd_check)
    args = ap.parse_args(argv)
    try:
        for name in ("isolation", "require_isolation"):
            if getattr(args, name, None) is not None:
                Isolation.parse(getattr(args, name))
    except ValueError as e:
        ap.error(str(e))
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
