"""Issue 14, items 3 and 8: thread counts have a documented limit (no segfault),
and library errors name the C++/Python field, never a CLI flag; the CLI maps the
fields to its flags from one table (apps/measattn/flags.hpp)."""

import numpy as np
import pytest

from conftest import run_cli, save_npy, write_safetensors

measattn = pytest.importorskip("measattn")


def needs(name):
    if not hasattr(measattn, name):
        pytest.skip(f"measattn built without {name}")


# ---- thread limits --------------------------------------------------------------

def test_set_num_threads_refuses_beyond_the_limit():
    assert measattn.MAX_THREADS == 1024
    before = measattn.get_num_threads()
    for bad in (0, -3, measattn.MAX_THREADS + 1, 100000):
        with pytest.raises(ValueError, match=r"^num_threads: must be in \[1, 1024\]"):
            measattn.set_num_threads(bad)
    assert measattn.get_num_threads() == before
    measattn.set_num_threads(before)


@pytest.mark.parametrize("threads", [-1, 1025, 100000])
def test_search_threads_are_validated(threads):
    needs("lipschitz_lower_bound")
    model = measattn.Model.random(3, 1, seed=0)
    with pytest.raises(ValueError, match=r"^threads: must be in \[0, 1024\]"):
        measattn.lipschitz_lower_bound(model, 1.0, restarts=1, threads=threads)
    with pytest.raises(ValueError, match=r"^threads: must be in \[0, 1024\]"):
        measattn.token_lipschitz_lower_bound(model, tokens=2, restarts=1, threads=threads)


def test_search_with_more_threads_than_restarts_works():
    needs("lipschitz_lower_bound")
    model = measattn.Model.random(3, 1, seed=0)
    a = measattn.lipschitz_lower_bound(model, 1.0, restarts=2, atoms=3, steps=3, threads=64)
    b = measattn.lipschitz_lower_bound(model, 1.0, restarts=2, atoms=3, steps=3, threads=1)
    assert a.ratio == b.ratio


# ---- field names in library messages --------------------------------------------

LIPSCHITZ_CASES = [
    (dict(atoms=0), "^atoms: must be >= 1"),
    (dict(restarts=0), "^restarts: must be >= 1"),
    (dict(steps=-1), "^steps: must be >= 0"),
    (dict(step_size=0.0), "^step_size: must be positive"),
]


@pytest.mark.parametrize("options,pattern", LIPSCHITZ_CASES)
def test_lipschitz_search_messages_name_the_option(options, pattern):
    needs("lipschitz_lower_bound")
    model = measattn.Model.random(3, 1, seed=0)
    with pytest.raises(ValueError, match=pattern):
        measattn.lipschitz_lower_bound(model, 1.0, **options)


@pytest.mark.parametrize("radius", [0.0, -1.0, float("inf")])
def test_radius_messages_name_radius(radius):
    needs("lipschitz_lower_bound")
    model = measattn.Model.random(3, 1, seed=0)
    with pytest.raises(ValueError, match="^radius: must be positive"):
        measattn.lipschitz_lower_bound(model, radius, restarts=1)
    with pytest.raises(ValueError, match="^radius: must be positive"):
        measattn.lipschitz_upper_bounds(model, radius)


def test_upper_bound_tokens_message():
    needs("lipschitz_upper_bounds")
    model = measattn.Model.random(3, 1, seed=0)
    with pytest.raises(ValueError, match="^tokens: must be >= 0"):
        measattn.lipschitz_upper_bounds(model, 1.0, tokens=-1)


@pytest.mark.parametrize("options,pattern", [
    (dict(kind="bogus"), "^kind: unknown kind 'bogus'"),
    (dict(repeats=0), "^repeats: must be >= 1"),
    (dict(radius=-1.0), "^radius: must be >= 0"),
    (dict(kind="sample", sizes=[0]), "^sizes: sizes must be >= 1"),
    (dict(kind="noise", sigmas=[-1.0]), "^sigmas: must be >= 0"),
    (dict(kind="corrupt", eps=[2.0]), r"^eps: must be in \[0, 1\]"),
])
def test_misspec_messages_name_the_option(options, pattern):
    needs("misspec")
    model = measattn.Model.random(3, 1, seed=0)
    x = np.random.default_rng(0).normal(size=(5, 3))
    with pytest.raises(ValueError, match=pattern):
        measattn.misspec(model, x, **options)


def test_causal_messages_do_not_name_a_flag():
    model = measattn.Model.random(3, 1, seed=0)
    x = np.random.default_rng(0).normal(size=(4, 3))
    with pytest.raises(ValueError) as err:
        model.attend(x, weights=[0, 1, 1, 1], causal=True)
    assert "--" not in str(err.value)
    assert str(err.value).startswith("weights: ")


def test_messages_name_the_argument():
    """Library messages start with the C++/Python argument they are about (issue 15)."""
    x = np.random.default_rng(0).normal(size=(4, 3))
    model = measattn.Model.random(3, 1, seed=0)
    with pytest.raises(ValueError, match="^images: "):
        measattn.Measure(x).push_forward(x[:2])
    with pytest.raises(ValueError, match="^query_block: "):
        model.attend(x, query_block=-1)
    with pytest.raises(ValueError, match="^key_block: "):
        model.attend(x, key_block=-1)
    if hasattr(measattn, "attention_entropy"):
        with pytest.raises(ValueError) as err:
            measattn.attention_entropy(model, x, weights=[0, 1, 1, 1], causal=True)
        assert str(err.value).startswith("weights: ") and "--" not in str(err.value)
    if hasattr(measattn, "cluster_count"):
        with pytest.raises(ValueError, match="^tolerance: "):
            measattn.cluster_count(x, -1.0)
    if hasattr(measattn, "expected_gaussian_norm"):
        with pytest.raises(ValueError, match="^d: "):
            measattn.expected_gaussian_norm(0)
    if hasattr(measattn, "lipschitz_ratio"):
        y = np.zeros((2, 5))
        with pytest.raises(ValueError, match="^mu: "):
            measattn.lipschitz_ratio(model, y, x)
        with pytest.raises(ValueError, match="^nu: "):
            measattn.lipschitz_ratio(model, x, y)


def test_no_library_message_names_a_cli_flag():
    """No string literal under src/ or include/ spells a CLI flag ("--name")."""
    import os
    import re
    root = os.environ.get("MEASATTN_SOURCE_DIR")
    if not root:
        pytest.skip("MEASATTN_SOURCE_DIR not set")
    literal = re.compile(r'"(?:[^"\\\n]|\\.)*"')
    flag = re.compile(r"--[a-z]")
    found = []
    for top in ("src", "include"):
        for dirpath, _, names in os.walk(os.path.join(root, top)):
            for name in names:
                if not name.endswith((".cpp", ".hpp")):
                    continue
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    for number, line in enumerate(f, 1):
                        code = line.split("//", 1)[0]
                        found += [f"{path}:{number}: {m}" for m in literal.findall(code)
                                  if flag.search(m)]
    assert not found, "\n".join(found)


# ---- the CLI translates fields to flags -------------------------------------------

def mha(path, e=4):
    r = np.random.default_rng(1)
    return write_safetensors(path, {"in_proj_weight": r.standard_normal((3 * e, e)) / e,
                                    "in_proj_bias": np.zeros(3 * e),
                                    "out_proj.weight": r.standard_normal((e, e)) / e,
                                    "out_proj.bias": np.zeros(e)}, {"num_heads": "1"})


def one_line_error(proc):
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


@pytest.mark.parametrize("args,expected", [
    (["--threads", "100000"], "--threads: must be in [0, 1024]"),
    (["--threads", "-1"], "--threads: must be in [0, 1024]"),
    (["--atoms", "0"], "--atoms: must be >= 1"),
    (["--restarts", "0"], "--restarts: must be >= 1"),
    (["--step-size", "0"], "--step-size: must be positive"),
])
def test_cli_lipschitz_names_flags(tmp_path, args, expected):
    model = mha(tmp_path / "m.safetensors")
    line = one_line_error(run_cli(["lipschitz", "--model", model, "--radius", "1"] + args))
    assert expected in line, line


def test_cli_misspec_kind_names_the_flag(tmp_path):
    model = mha(tmp_path / "m.safetensors")
    x = save_npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(5, 4)))
    line = one_line_error(run_cli(["misspec", "--model", model, "--tokens", x, "--kind", "nope"]))
    assert "--kind: unknown kind 'nope'" in line, line
    line = one_line_error(run_cli(["misspec", "--model", model, "--tokens", x, "--kind", "sample",
                                   "--repeats", "0"]))
    assert "--repeats: must be >= 1" in line, line


def test_cli_maxent_names_flags_and_files(tmp_path):
    g = save_npy(tmp_path / "g.npy", [0.0, 1.0, 2.0])
    w = save_npy(tmp_path / "w.npy", [1.0, -1.0, 1.0])
    line = one_line_error(run_cli(["maxent", "--scores", g, "--target", "1", "--tolerance", "2"]))
    assert line.endswith("--tolerance: must be in [0, 1)"), line
    line = one_line_error(run_cli(["maxent", "--scores", g, "--target", "5"]))
    assert "--target: " in line, line
    line = one_line_error(run_cli(["maxent", "--scores", g, "--weights", w, "--target", "1"]))
    assert "--weights: " + str(w) + ": " in line and "negative" in line, line


def test_cli_attend_names_the_weights_file(tmp_path):
    model = mha(tmp_path / "m.safetensors")
    x = save_npy(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(4, 4)))
    w = save_npy(tmp_path / "w.npy", [0.0, 1.0, 1.0, 1.0])
    line = one_line_error(run_cli(["attend", "--model", model, "--tokens", x, "--weights", w,
                                   "--causal", "--out", tmp_path / "o.npy"]))
    assert line.startswith("measattn: error: --weights: " + str(w) + ": "), line
    assert "query 0" in line and "--causal" not in line.split(str(w))[1], line
