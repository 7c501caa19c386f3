"""Registry errors as a user meets them: a name registered twice (whichever file sorts first),
a plugin file that fails to import, and what `gbmpo-bench` and the conformance suite then say.

In-process tests build a Registry over a temporary package; the end-to-end tests run the real
`gbmpo.divergences` in a subprocess with a temporary directory added to the package's path, so
a file there loads exactly as a new file in gbmpo/divergences/ would.
"""

import importlib
import subprocess
import sys
import uuid
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from gbmpo.registry import PluginWarning, RegistryError

ROOT = Path(__file__).resolve().parent.parent

WIDGET = '''from . import REG


@REG.register("{name}")
class {cls}:
    """{cls} widget."""
'''


def make_registry(tmp_path, monkeypatch, files: dict[str, str]):
    """A fresh package `plugins_<id>` under tmp_path whose modules register into its REG."""
    name = f"plugins_{uuid.uuid4().hex[:8]}"
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "from gbmpo.registry import Registry\n\nREG = Registry('widget', __name__)\n")
    for fname, body in files.items():
        (pkg / fname).write_text(body)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)  # messages show paths relative to the working directory
    return importlib.import_module(name).REG, name


def widget(name: str, cls: str) -> str:
    return WIDGET.format(name=name, cls=cls)


# ---- duplicates ----------------------------------------------------------------------------
@pytest.mark.parametrize("mine", ["aaa_mine.py", "zzz_mine.py"])
def test_duplicate_names_both_files_in_registration_order(tmp_path, monkeypatch, mine):
    reg, pkg = make_registry(tmp_path, monkeypatch, {
        "kl.py": widget("kl_k3", "KLk3") + widget("kl_k1", "KLk1"),
        mine: widget("kl_k3", "MyK3") + widget("mine_other", "MyOther"),
    })
    first, second = (f"{pkg}/{mine} (class MyK3)", f"{pkg}/kl.py (class KLk3)")
    if mine > "kl.py":
        first, second = second, first
    expected = (f"widget 'kl_k3' is registered twice: first by {first}, again by {second}; "
                "rename one of them (registry names must be unique)")
    with pytest.raises(RegistryError) as info:
        reg.get("kl_k3")
    assert str(info.value) == expected
    assert [p.message for p in reg.problems()] == [expected]
    later = sorted(["kl", mine[:-3]])[1]
    assert reg.problems()[0].module == f"{pkg}.{later}"  # the file to fix, for the tests
    # every other name of both files still works; the clash is reported once
    with pytest.warns(PluginWarning) as record:
        assert reg.get("kl_k1").__name__ == "KLk1"
    assert [str(w.message) for w in record] == [
        expected + "; 'kl_k3' is unavailable until then, the other widget entries work"]
    assert reg.names() == ["kl_k1", "mine_other"]
    assert "kl_k3" not in reg
    assert reg.unknown_message("kl_k3") == expected


def test_reloading_a_module_is_not_a_duplicate(tmp_path, monkeypatch):
    reg, pkg = make_registry(tmp_path, monkeypatch, {"kl.py": widget("kl_k3", "KLk3")})
    assert reg.names() == ["kl_k3"]
    importlib.reload(importlib.import_module(f"{pkg}.kl"))
    assert reg.problems() == [] and reg.get("kl_k3").__name__ == "KLk3"


# ---- a plugin file that fails to import ----------------------------------------------------
BROKEN = widget("mine", "Mine") + "\n\nSCALE = toch.ones(1)\n"  # line 9: a typo'd import


def test_a_broken_file_leaves_the_others_working_and_is_named(tmp_path, monkeypatch):
    reg, pkg = make_registry(tmp_path, monkeypatch, {
        "good.py": widget("good", "Good"), "mine.py": BROKEN})
    failure = (f"widget plugin {pkg}/mine.py failed to import: NameError: name 'toch' is not "
               "defined (line 9)")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        # the broken file registered 'mine' before failing: the whole file is dropped
        with pytest.raises(RegistryError) as info:
            reg.get("mine")
        assert str(info.value) == f"widget 'mine' is not available: {failure}"
        assert record == []  # the error itself carries the problem
        assert reg.get("good").__name__ == "Good"
        assert reg.get("good").__name__ == "Good"
    assert [str(w.message) for w in record] == [
        failure + "; it is skipped, the other widget entries work"]  # once, not per lookup
    with pytest.raises(RegistryError) as info:
        reg.get("goood")
    assert str(info.value) == (f"unknown widget 'goood'. Did you mean 'good'? Not loaded: "
                               f"{failure}. Valid choices: good")
    assert reg.names() == ["good"]
    with pytest.raises(RegistryError, match="failed to import: NameError"):
        reg.check()


def test_syntax_error_names_the_line(tmp_path, monkeypatch):
    reg, pkg = make_registry(tmp_path, monkeypatch, {"mine.py": "x = 1\ndef f(:\n    pass\n"})
    assert [p.message for p in reg.problems()] == [
        f"widget plugin {pkg}/mine.py failed to import: SyntaxError: invalid syntax (line 2)"]


# ---- end to end: the real divergence registry, the CLI and the conformance suite -----------
MY_K3 = '''import torch

from gbmpo.divergences.base import DIVERGENCES, Divergence


@DIVERGENCES.register("kl_k3")
class MyK3(Divergence):
    """My k3."""

    def per_token(self, view):
        return torch.zeros_like(view.logp)
'''

MY_DIV_BROKEN = '''import torch

from gbmpo.divergences.base import DIVERGENCES, Divergence


@DIVERGENCES.register("my_div")
class MyDiv(Divergence):
    """Mine."""

    def per_token(self, view):
        return torch.zeros_like(view.logp)


SCALE = toch.ones(1)
'''

WITH_PLUGINS = ("import sys, gbmpo.divergences as d; d.__path__.insert(0, sys.argv.pop(1)); "
                "from gbmpo.cli import main; sys.argv[0] = 'gbmpo-bench'; sys.exit(main())")


def gbmpo_bench(plugin_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """`gbmpo-bench ARGS` with the files of plugin_dir loaded as part of gbmpo.divergences."""
    return subprocess.run([sys.executable, "-c", WITH_PLUGINS, str(plugin_dir), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("mine", ["aaa_mine.py", "zzz_mine.py"])
def test_list_prints_the_clash_as_one_line_and_lists_the_rest(tmp_path, mine):
    (tmp_path / mine).write_text(MY_K3)
    first, again = f"{tmp_path}/{mine} (class MyK3)", "gbmpo/divergences/kl.py (class KLk3)"
    if mine > "kl.py":
        first, again = again, first
    r = gbmpo_bench(tmp_path, "list", "divergences")
    assert r.returncode == 1
    assert r.stderr.splitlines() == [
        f"error: divergence 'kl_k3' is registered twice: first by {first}, again by {again}; "
        "rename one of them (registry names must be unique)"]
    names = [line.split()[0] for line in r.stdout.splitlines()[1:]]
    assert "kl_k1" in names and "kl_k3_is" in names and "kl_k3" not in names


def test_train_names_the_broken_file_and_other_names_still_resolve(tmp_path):
    (tmp_path / "my_div.py").write_text(MY_DIV_BROKEN)
    failure = (f"divergence plugin {tmp_path}/my_div.py failed to import: NameError: name "
               "'toch' is not defined (line 14)")
    r = gbmpo_bench(tmp_path, "train", "--set", "divergence.name=my_div")
    assert r.returncode == 2
    assert r.stderr.splitlines() == [
        f"config error: divergence.name: divergence 'my_div' is not available: {failure}"]
    # a grid without my_div still expands; the broken file is reported once, as a warning
    r = gbmpo_bench(tmp_path, "run", "smoke", "--dry-run", "--results", str(tmp_path / "runs"))
    assert r.returncode == 0, r.stderr
    assert "kl_k3" in r.stdout
    assert r.stderr.splitlines() == [
        f"warning: {failure}; it is skipped, the other divergence entries work"]


BAD_DIVERGENCES = '''import torch

from gbmpo.divergences.base import DIVERGENCES, Divergence


@DIVERGENCES.register("bad_scalar")
class BadScalar(Divergence):
    """Returns the batch mean: a scalar."""

    def per_token(self, view):
        return ((view.logp - view.logp_ref) ** 2).mean()


@DIVERGENCES.register("bad_sign")
class BadSign(Divergence):
    """Signed, yet keeps nonnegative = True."""

    def per_token(self, view):
        return view.logp - view.logp_ref


@DIVERGENCES.register("bad_offset")
class BadOffset(Divergence):
    """Not zero at the reference."""

    def per_token(self, view):
        return (view.logp - view.logp_ref) ** 2 + 0.5


@DIVERGENCES.register("bad_exp")
class BadExp(Divergence):
    """Overflows at large log-ratios."""

    def per_token(self, view):
        r = view.logp - view.logp_ref
        return torch.exp(30 * r) - 1 - 30 * r


@DIVERGENCES.register("signed_ok")
class SignedOk(Divergence):
    """Signed by design."""

    nonnegative = False

    def per_token(self, view):
        return view.logp - view.logp_ref
'''

RUN_CONFORMANCE = ("import sys, gbmpo.divergences as d; d.__path__.insert(0, sys.argv.pop(1)); "
                   "import pytest; sys.exit(pytest.main(sys.argv[1:]))")


def test_conformance_suite_names_plugins_and_values_and_survives_a_broken_file(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_div.py").write_text(MY_DIV_BROKEN)
    (plugins / "zzz_mine.py").write_text(MY_K3)
    (plugins / "bad.py").write_text(BAD_DIVERGENCES)
    report = tmp_path / "report.xml"
    subprocess.run(
        [sys.executable, "-c", RUN_CONFORMANCE, str(plugins), "tests/test_conformance.py", "-q",
         "-p", "no:cacheprovider", "-W", "ignore::UserWarning", f"--junitxml={report}",
         "-k", "plugin_module or kl_k1 or kl_k2 or bad_ or signed_ok"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    outcome = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        found = [(child.tag, child.get("message", "")) for child in case
                 if child.tag in ("failure", "error", "skipped")]
        outcome[case.get("name")] = found[0] if found else ("passed", "")

    def failed(test: str) -> str:
        tag, message = outcome[test]
        assert tag == "failure", (test, tag, message)
        return message.removeprefix("Failed: ")  # pytest's prefix; the terminal shows the rest

    # the broken file and the clash: one failing test each, naming the file(s)
    assert failed("test_plugin_module_loads[gbmpo.divergences.my_div]") == (
        f"divergence plugin {plugins}/my_div.py failed to import: NameError: name 'toch' is "
        "not defined (line 14)")
    assert failed("test_plugin_module_loads[gbmpo.divergences.zzz_mine]") == (
        f"divergence 'kl_k3' is registered twice: first by gbmpo/divergences/kl.py (class KLk3), "
        f"again by {plugins}/zzz_mine.py (class MyK3); rename one of them (registry names must "
        "be unique)")
    assert outcome["test_plugin_module_loads[gbmpo.divergences.kl]"] == ("passed", "")
    # every other entry is still tested, and passes
    others = [t for t in outcome if t.endswith(("[kl_k1]", "[kl_k2]", "-kl_k1]", "-kl_k2]"))]
    assert len(others) == 12 and all(outcome[t][0] in ("passed", "skipped") for t in others)
    # offending values, with the plugin's name
    assert failed("test_divergence_shape_and_grad[bad_scalar]") == (
        "divergence 'bad_scalar': per_token() must return a floating torch.Tensor of shape "
        "(B, T) = (6, 7), the shape of view.mask; got shape (), dtype torch.float32: a scalar; "
        "return one value per token and let the trainer aggregate")
    assert failed("test_divergence_nonnegative_where_declared[bad_sign]") == (
        "divergence 'bad_sign': per_token must be >= 0 (nonnegative = True); min D = -2.228 at "
        "row 5, column 2 of the view with seed 0. Set nonnegative = False on the class if D can "
        "be negative by design")
    assert failed("test_divergence_zero_at_reference[bad_offset]") == (
        "divergence 'bad_offset': per_token must be 0 where policy == reference "
        "(zero_at_reference = True); max |D| = 0.5 at row 0, column 0. Set zero_at_reference = "
        "False on the class if that is by design")
    assert failed("test_divergence_finite_at_extreme_log_ratio[50.0-bad_exp]") == (
        "divergence 'bad_exp': per_token is not finite at log p - log p_ref = 50, logp_old = "
        "logp_ref: first at row 0, column 0 (value inf)")
    # a class flag that switches a check off is a skip with its reason
    assert outcome["test_divergence_nonnegative_where_declared[signed_ok]"] == (
        "skipped", "divergence 'signed_ok': SignedOk.nonnegative = False switches this check "
        "off (Signed by design.)")
