"""`gbmpo-bench` entry point.

Every sub-command is one module in `gbmpo.commands` defining `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. The command name is the module name with
underscores turned into dashes (`verify_math.py` -> `verify-math`). Nothing here lists them.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

# torch's OpenMP workers spin at barriers by default; beside other CPU-bound work that burns
# the time slices the work needs. Sleeping waiters cost little here.
# Set before torch is imported, and inherited by every process the commands start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
import warnings

import gbmpo.commands
from gbmpo.checks import PluginContractError
from gbmpo.registry import PluginWarning, RegistryError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gbmpo-bench",
        description="Benchmark suite for group-based RL post-training with a swappable divergence.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for mod_info in sorted(pkgutil.iter_modules(gbmpo.commands.__path__), key=lambda m: m.name):
        if mod_info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"gbmpo.commands.{mod_info.name}")
        name = mod_info.name.replace("_", "-")
        p = sub.add_parser(name, help=mod.HELP, description=mod.__doc__ or mod.HELP,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def _show_plugin_warning(message, category, filename, lineno, file=None, line=None):
    """A skipped plugin file is reported as one line, like the errors, not as a warning with a
    source excerpt; every other warning keeps Python's format."""
    if issubclass(category, PluginWarning):
        print(f"warning: {message}", file=file or sys.stderr)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


_default_showwarning = warnings.showwarning


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_plugin_warning
        try:
            return int(args._run(args) or 0)
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            return 130
        except (RegistryError, PluginContractError) as e:
            # a broken or clashing plugin: the message names the file; a traceback into the
            # registry or the trainer would only hide it
            print(f"error: {e}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
