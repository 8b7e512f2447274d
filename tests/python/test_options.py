"""One options path: the CLI's flags, its JSON outputs and the Python keywords name
the fields of the library's Options structs (their field tables) with the same
defaults; the type stubs match the compiled module (mypy.stubtest)."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import pytest

import measattn
from measattn import _measattn
from conftest import run_cli, save_npy

# Subcommand -> the Python functions whose options it binds (a flag's field is a
# field of one of their tables).
COMMANDS = {
    "wasserstein": ["wasserstein"],
    "flow": ["flow"],
    "attend": ["attend"],
    "lipschitz": ["lipschitz_upper_bounds", "lipschitz_lower_bound"],
    "maxent": ["maxent"],
    "entropy": ["attention_entropy"],
    "misspec": ["misspec"],
    "gaussian": ["gaussian_attention", "gaussian_flow"],
}

# Python functions with a field table but no subcommand binding it.
OTHER_FUNCTIONS = ["token_jacobian_norm", "token_lipschitz_lower_bound", "sinkhorn_attention"]

# Python defaults that stand for the table's: None = the empty list (the default grid).
PYTHON_DEFAULTS = {
    ("attention_entropy", "betas"): ([], None),
    ("flow", "progress"): (False, None),  # None = no progress; True or a callable: progress
    ("misspec", "sizes"): ([4, 8, 16, 32, 64, 128], None),
    ("misspec", "sigmas"): ([0.01, 0.03, 0.1, 0.3], None),
    ("misspec", "eps"): ([0.01, 0.03, 0.1, 0.3], None),
}

# Older spellings of flags kept as aliases (existing command lines keep working).
ALIASES = {
    ("wasserstein", "tolerance"): ["--tol"],
    ("wasserstein", "max_iterations"): ["--max-iter"],
    ("flow", "tolerance"): ["--tol"],
    ("flow", "cluster_tolerance"): ["--cluster-tol"],
    ("attend", "sinkhorn_iterations"): ["--sinkhorn-iters"],
    ("maxent", "beta_tolerance"): ["--tolerance"],
}

# Python keywords spelled differently from their field (none: Model's sinkhorn_iters is
# now a deprecated keyword-only alias of sinkhorn_iterations, see below).
PYTHON_ALIASES = {}

# Fields of a subcommand's table that it does not bind, with the flag that sets them
# instead (misspec: --random-corruption is the negation adversarial = false).
UNBOUND = {("misspec", "adversarial"): "--random-corruption"}


def bound_options():
    proc = run_cli(["--options-json"], check=True)
    return json.loads(proc.stdout)


def signature_defaults(function):
    """{keyword: default} from the pybind11 signature line of the docstring."""
    first = function.__doc__.splitlines()[0]
    params = first[first.index("(") + 1:first.rindex(")")]
    out = {}
    for m in re.finditer(r"(\w+): [\w.\[\], ]+? = ('[^']*'|[^,]+)", params):
        text = m.group(2).strip()
        out[m.group(1)] = text[1:-1] if text.startswith("'") else eval(text, {})  # noqa: S307
    return out


def python_function(name):
    return getattr(measattn.Model, name) if name == "attend" else getattr(_measattn, name)


def test_every_bound_flag_is_a_field_with_its_default():
    dump = bound_options()
    assert set(COMMANDS) <= set(dump)
    for command, functions in COMMANDS.items():
        fields = {}
        for function in functions:
            fields.update(dict(_measattn.option_fields(function)))
        for row in dump[command]:
            field = row["field"]
            assert field in fields, (command, field)
            assert row["flag"] == "--" + field.replace("_", "-"), row
            assert row["aliases"] == ALIASES.get((command, field), []), row
            default = fields[field]
            if isinstance(default, float):
                assert row["default"] == pytest.approx(default, rel=0, abs=0), row
            else:
                assert row["default"] == default, (row, default)


def test_flags_in_help_are_the_bound_ones():
    dump = bound_options()
    for command in COMMANDS:
        helptext = run_cli([command, "--help"], check=True).stdout
        for row in dump[command]:
            names = ",".join([row["flag"], *row["aliases"]])
            assert names in helptext, (command, names)


def test_python_keywords_are_the_fields_with_their_defaults():
    for functions in [*COMMANDS.values(), OTHER_FUNCTIONS]:
        for function in functions:
            table = dict(_measattn.option_fields(function))
            signature = signature_defaults(python_function(function))
            first = python_function(function).__doc__.splitlines()[0]
            kwargs_only = "**kwargs" in first
            required = set(re.findall(r"[(,] ?(\w+): [\w.\[\], ]+?(?=[,)])", first))
            for field, default in table.items():
                keyword = PYTHON_ALIASES.get((function, field), field)
                if keyword in required:
                    continue  # a required argument (lipschitz's radius): no default to compare
                if (function, field) in PYTHON_DEFAULTS:
                    assert (default, signature[keyword]) == PYTHON_DEFAULTS[(function, field)]
                elif keyword in signature:
                    assert signature[keyword] == default, (function, field)
                else:
                    # Options passed as **kwargs: the table names them (an unknown
                    # keyword is refused).
                    assert kwargs_only, (function, field)


def test_wasserstein_default_method_is_auto_everywhere():
    assert dict(_measattn.option_fields("wasserstein"))["method"] == "auto"
    assert signature_defaults(_measattn.wasserstein)["method"] == "auto"
    row = [r for r in bound_options()["wasserstein"] if r["field"] == "method"][0]
    assert row["default"] == "auto"
    x = np.arange(4.0).reshape(4, 1)
    assert measattn.wasserstein(x, x + 1).method == "1d"  # auto picks 1d for d = 1


def test_python_keywords_set_the_fields():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2))
    r = measattn.wasserstein(x, y, method="sinkhorn", reg=0.5, max_iterations=3)
    assert r.status == "iteration_limit" and r.iterations == 3
    with pytest.raises(ValueError, match="max_iterations: must be >= 1"):
        measattn.wasserstein(x, y, max_iterations=0)
    with pytest.raises(ValueError, match="no option table"):
        _measattn.option_fields("nope")


def test_json_outputs_echo_the_fields(tmp_path):
    rng = np.random.default_rng(1)
    x, y = save_npy(tmp_path / "x.npy", rng.normal(size=(6, 2))), save_npy(
        tmp_path / "y.npy", rng.normal(size=(5, 2)))
    table = dict(_measattn.option_fields("wasserstein"))
    out = json.loads(run_cli(["wasserstein", x, y, "--method", "sinkhorn", "--json"],
                             check=True).stdout)
    for field in ("p", "reg", "tolerance"):
        assert out[field] == table[field], field
    out = json.loads(run_cli(["wasserstein", x, y, "--json"], check=True).stdout)
    assert out["p"] == table["p"]

    flow = dict(_measattn.option_fields("flow"))
    run_cli(["flow", "--builtin", "sa", "--beta", 1, "--tokens", x, "--time", 0.5, "--scheme",
             "dopri5", "--no-plot", "--out", tmp_path / "f"], check=True)
    summary = json.loads((tmp_path / "f" / "summary.json").read_text())
    for field in ("scheme", "sphere", "tolerance", "save_every", "cluster_tolerance"):
        assert field in summary, field
    for field in ("sphere", "tolerance", "save_every", "cluster_tolerance"):
        assert summary[field] == flow[field], field
    assert summary["scheme"] == "dopri5" and summary["time_requested"] == 0.5


def test_messages_name_the_flag_as_typed(tmp_path):
    x = save_npy(tmp_path / "x.npy", np.zeros((4, 2)))
    for flag in ("--tol", "--tolerance"):
        proc = run_cli(["wasserstein", x, x, flag, "-1"])
        assert proc.returncode == 2
        assert proc.stderr.startswith(f"measattn: error: {flag}: must be"), proc.stderr
    for flag in ("--max-iter", "--max-iterations"):
        proc = run_cli(["wasserstein", x, x, flag, "0"])
        assert proc.returncode == 2 and f"error: {flag}: must be >= 1" in proc.stderr


def test_stubs_match_the_module():
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (Debian: apt-get install python3-mypy)")
    allowlist = pathlib.Path(__file__).with_name("stubtest_allowlist.txt")
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-m", "mypy.stubtest", "measattn._measattn",
                           "--allowlist", str(allowlist)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def small_model(tmp_path, rng):
    """A 2-head self-attention layer in R^4 and 6 tokens, as files."""
    model = str(tmp_path / "m.safetensors")
    measattn.Model.random(4, 2, bias=True, seed=3).save(model)
    return model, save_npy(tmp_path / "x.npy", rng.normal(size=(6, 4)))


def test_entropy_and_misspec_bind_their_tables():
    dump = bound_options()
    entropy = {row["field"]: row for row in dump["entropy"]}
    assert set(entropy) == {"betas", "causal"}
    assert entropy["betas"]["default"] == [] and entropy["causal"]["default"] is False
    misspec = {row["field"]: row for row in dump["misspec"]}
    table = dict(_measattn.option_fields("misspec"))
    assert set(misspec) | {f for (c, f) in UNBOUND if c == "misspec"} == set(table)
    for field, row in misspec.items():
        assert row["default"] == table[field], field
    helptext = run_cli(["misspec", "--help"], check=True).stdout
    for (command, field), flag in UNBOUND.items():
        assert field not in misspec and flag in helptext
    # --kind stays required although its field has a default.
    proc = run_cli(["misspec", "--model", "m", "--tokens", "x"])
    assert proc.returncode == 2 and "--kind" in proc.stderr


def test_entropy_and_misspec_flags_set_the_fields(tmp_path):
    rng = np.random.default_rng(2)
    model, x = small_model(tmp_path, rng)
    grid = _measattn.default_temperature_grid()
    base = ["entropy", "--model", model, "--tokens", x, "--json"]
    out = json.loads(run_cli(base, check=True).stdout)
    assert out["causal"] == dict(_measattn.option_fields("attention_entropy"))["causal"]
    assert out["heads"][0]["temperature_curve"]["beta"] == pytest.approx(grid, rel=0, abs=0)
    out = json.loads(run_cli([*base, "--causal", "--betas", "-1,0,2.5"], check=True).stdout)
    assert out["causal"] is True
    assert out["heads"][0]["temperature_curve"]["beta"] == [-1, 0, 2.5]
    # An empty list keeps the default grid, as before the table bound the flag.
    out = json.loads(run_cli([*base, "--betas", ""], check=True).stdout)
    assert out["heads"][0]["temperature_curve"]["beta"] == pytest.approx(grid, rel=0, abs=0)
    proc = run_cli([*base, "--betas", "1,x"])
    assert proc.returncode == 2
    assert proc.stderr.startswith("measattn: error: --betas: 'x' is not a finite number")

    base = ["misspec", "--model", model, "--tokens", x, "--repeats", "1", "--json"]
    out = json.loads(run_cli([*base, "--kind", "sample"], check=True).stdout)
    table = dict(_measattn.option_fields("misspec"))
    assert [row["n"] for row in out["rows"]] == table["sizes"]
    out = json.loads(run_cli([*base, "--kind", "noise", "--sigmas", "0.1,0.2"], check=True).stdout)
    assert out["kind"] == "noise" and out["repeats"] == 1
    assert [row["sigma"] for row in out["rows"]] == [0.1, 0.2]
    out = json.loads(run_cli([*base, "--kind", "corrupt", "--eps", "0.1", "0.2",
                              "--random-corruption"], check=True).stdout)
    assert [row["eps"] for row in out["rows"]] == [0.1, 0.2]
    for flag, value, message in [("--repeats", "0", "--repeats: must be >= 1"),
                                 ("--radius", "-1", "--radius: must be >= 0"),
                                 ("--kind", "bogus", "--kind: unknown kind 'bogus'")]:
        args = ["misspec", "--model", model, "--tokens", x, flag, value]
        if flag != "--kind":
            args += ["--kind", "sample"]
        proc = run_cli(args)
        assert proc.returncode == 2 and proc.stderr.startswith(f"measattn: error: {message}"), (
            flag, proc.stderr)


def test_sinkhorn_iters_is_a_deprecated_alias():
    rng = np.random.default_rng(4)
    model = measattn.Model.random(4, 2, bias=True, seed=5)
    x = rng.normal(size=(7, 4))

    def array(result):
        return result.atoms if isinstance(result, measattn.Measure) else result

    for method in ("attend", "head_fields", "reference", "kernel", "self_attention"):
        call = getattr(model, method)
        new = array(call(x, normalization="sinkhorn", sinkhorn_iterations=3))
        with pytest.warns(DeprecationWarning, match="use sinkhorn_iterations"):
            old = array(call(x, normalization="sinkhorn", sinkhorn_iters=3))
        np.testing.assert_array_equal(new, old)
        assert not np.array_equal(new, array(call(x, normalization="sinkhorn"))), method
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            with pytest.raises(ValueError, match="sinkhorn_iters: .*give only one"):
                call(x, normalization="sinkhorn", sinkhorn_iterations=2, sinkhorn_iters=3)
            # The same value twice is the same request.
            np.testing.assert_array_equal(
                new, array(call(x, normalization="sinkhorn", sinkhorn_iterations=3,
                                sinkhorn_iters=3)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises(ValueError, match="sinkhorn_iterations: must be >= 0"):
            model.attend(x, normalization="sinkhorn", sinkhorn_iters=-1)
