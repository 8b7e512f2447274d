"""Hostile inputs, generated: every subcommand and the main Python functions on
magnitudes from 1e-300 to 1e300, zero and denormal weights, duplicates, n = 1,
d = 1, huge p and tiny tolerances. Whatever the input, the contract holds:

- the CLI exits 0 or 2; with 2, stderr is one line "measattn: error: ...";
- Python returns or raises ValueError (nothing else, never a crash);
- no NaN or inf in any output (JSON numbers, .npy arrays, printed text), except
  the fields documented as possibly infinite (they print as null in JSON);
- a reported value lies inside its own reported bounds;
- nothing is created or changed outside the output path;
- every run ends within a bounded time (a hang fails the test, it does not stall CI).

The instances are drawn from a fixed seed, so a failure names a reproducible case.
"""

import json
import math
import os
import pathlib
import re
import subprocess

import numpy as np
import pytest

from conftest import run_cli, save_npy, write_safetensors

SCALES = [1e-300, 1e-150, 1e-20, 1.0, 1e20, 1e150, 1e300]
TIMEOUT = 60  # seconds per run: generous (each case takes well under a second or two)
# JSON fields that may legitimately be null (a bound that is +inf, a rate that is undefined).
NULLABLE = {"upper", "gap", "best_upper", "a_priori", "output_rate", "input_rate", "tolerance",
            "steps_requested", "beta", "plot", "trajectory", "target", "gap_kim_l2",
            "value", "energy", "kim_token_l2", "witness_dir", "lipschitz", "bound",
            # costs are p-th powers of distances: past the double range for huge p
            # (documented; the value W_p and its bounds stay finite)
            "cost", "entropic_cost", "transport_cost", "rounded_cost"}
# Objects whose members are upper bounds (each may be +inf: no finite bound).
UPPER_BOUND_GROUPS = {"upper_bounds", "heads"}
# In text output an infinite upper bound is printed "+inf" on purpose; a bare inf or
# nan is a defect.
NONFINITE_TEXT = re.compile(r"(?<![A-Za-z_+])(nan|-?inf)(?![A-Za-z_])", re.IGNORECASE)


def snapshot(root):
    """Every path under root with its size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = pathlib.Path(dirpath) / name
            st = p.lstat()
            # A directory's own size and time change whenever an entry inside it does;
            # its entries are compared one by one instead.
            is_dir = p.is_dir() and not p.is_symlink()
            out[str(p.relative_to(root))] = (None, None, True) if is_dir else \
                (st.st_size, st.st_mtime_ns, False)
    return out


def changed_paths(before, after):
    return sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))


def check_json_finite(obj, path="$"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            if v is None:
                continue
            check_json_finite(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            check_json_finite(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), f"non-finite number at {path}"


def check_json_nulls(obj, path="$"):
    """null only where documented (NULLABLE keys; any upper bound may be +inf)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k in UPPER_BOUND_GROUPS:
                continue
            if v is None:
                assert k in NULLABLE, f"unexpected null at {path}.{k}"
            else:
                check_json_nulls(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            if v is not None:
                check_json_nulls(v, f"{path}[{i}]")


def check_bounds(j):
    """value inside [lower, upper] wherever all three are reported."""
    if isinstance(j, dict):
        if all(isinstance(j.get(k), (int, float)) for k in ("value", "lower", "upper")):
            lo, v, hi = j["lower"], j["value"], j["upper"]
            slack = 1e-9 * max(abs(lo), abs(hi), abs(v), 1e-300)
            assert lo - slack <= v <= hi + slack, f"value {v} outside [{lo}, {hi}]"
        for v in j.values():
            check_bounds(v)
    elif isinstance(j, list):
        for v in j:
            check_bounds(v)


# ---- instances -------------------------------------------------------------------------

def make_tokens(rng, n, d, scale, duplicates):
    x = rng.standard_normal((n, d))
    if duplicates and n > 1:
        x[n // 2:] = x[: n - n // 2]
    return x * scale


def make_weights(rng, n, kind):
    if kind == "uniform":
        return None
    w = rng.random(n) + 0.1
    if kind == "zeros" and n > 1:
        w[rng.permutation(n)[: n // 2]] = 0.0
    elif kind == "denormal":
        w[0] = 5e-324
        if n > 1:
            w[1:] = w[1:] * 1e-310
    elif kind == "one":
        w[:] = 0.0
        w[rng.integers(n)] = 1.0
    return w


def make_model(path, d, scale, rng, heads=1):
    e = d * heads
    tensors = {"in_proj_weight": rng.standard_normal((3 * e, d)) / math.sqrt(d) * scale,
               "in_proj_bias": rng.standard_normal(3 * e) * 0.1 * scale,
               "out_proj.weight": rng.standard_normal((d, e)) / math.sqrt(e) * scale,
               "out_proj.bias": rng.standard_normal(d) * 0.1 * scale}
    return write_safetensors(path, tensors, {"num_heads": str(heads)})


def instances(count, seed):
    rng = np.random.default_rng(seed)
    shapes = [(1, 1), (1, 3), (5, 1), (6, 4), (7, 2)]
    for case in range(count):
        n, d = shapes[rng.integers(len(shapes))]
        yield {
            "id": case,
            "n": n, "d": d,
            "scale": SCALES[rng.integers(len(SCALES))],
            "model_scale": [1.0, 1.0, 1e-150, 1e50, 1e100][rng.integers(5)],
            "duplicates": bool(rng.integers(2)),
            "weights": ["uniform", "zeros", "denormal", "one"][rng.integers(4)],
            "seed": int(rng.integers(1 << 30)),
        }


def materialize(tmp, inst):
    rng = np.random.default_rng(inst["seed"])
    x = make_tokens(rng, inst["n"], inst["d"], inst["scale"], inst["duplicates"])
    y = make_tokens(rng, inst["n"] + 1, inst["d"], inst["scale"], False)
    w = make_weights(rng, inst["n"], inst["weights"])
    inputs = tmp / "in"
    inputs.mkdir()
    files = {"x": save_npy(inputs / "x.npy", x), "y": save_npy(inputs / "y.npy", y),
             "model": make_model(inputs / "m.safetensors", inst["d"], inst["model_scale"], rng)}
    if w is not None:
        files["w"] = save_npy(inputs / "w.npy", w)
    files["g"] = save_npy(inputs / "g.npy", x[:, 0] if inst["d"] else x)
    return files


def cli_commands(files, out, inst):
    """(name, args, kind of output) for every subcommand on the instance's files."""
    weights = ["--weights", files["w"]] if "w" in files else []
    wa = ["--wa", files["w"]] if "w" in files else []
    radius = max(inst["scale"] * 10 * math.sqrt(inst["d"]), 1e-300)
    cmds = [
        ("attend", ["attend", "--model", files["model"], "--tokens", files["x"], *weights,
                    "--out", out / "o.npy"], out / "o.npy"),
        ("attend-f32", ["attend", "--model", files["model"], "--tokens", files["x"], *weights,
                        "--dtype", "f32", "--out", out / "o32.npy"], out / "o32.npy"),
        ("attend-sinkhorn", ["attend", "--model", files["model"], "--tokens", files["x"],
                             *weights, "--normalization", "sinkhorn", "--sinkhorn-iters", "5",
                             "--out", out / "os.npy"], out / "os.npy"),
        ("entropy", ["entropy", "--model", files["model"], "--tokens", files["x"], *weights,
                     "--json"], None),
        ("maxent-beta", ["maxent", "--scores", files["g"], "--beta", "1", "--json"], None),
        ("flow", ["flow", "--builtin", "sa", "--beta", "1", "--tokens", files["x"], *weights,
                  "--time", "1", "--steps", "3", "--no-plot", "--out", out / "flow"],
         out / "flow"),
        ("flow-dopri5-tiny-tol", ["flow", "--builtin", "sa", "--beta", "1", "--tokens",
                                  files["x"], "--time", "1", "--scheme", "dopri5", "--tol",
                                  "1e-300", "--no-plot", "--out", out / "flow2"], out / "flow2"),
        ("lipschitz", ["lipschitz", "--model", files["model"], "--radius", repr(radius),
                       "--atoms", "2", "--restarts", "2", "--steps", "3", "--token-restarts",
                       "1", "--json"], None),
        ("misspec", ["misspec", "--model", files["model"], "--tokens", files["x"], *weights,
                     "--kind", "noise", "--sigmas", "0.1", "--repeats", "1", "--json"], None),
        ("misspec-text", ["misspec", "--model", files["model"], "--tokens", files["x"], *weights,
                          "--kind", "sample", "--sizes", "2,4", "--repeats", "1"], None),
    ]
    for method in ["auto", "exact", "sinkhorn", "sliced"]:
        for p in ["1", "2", "1000"]:
            cmds.append((f"wasserstein-{method}-p{p}",
                         ["wasserstein", files["x"], files["y"], *wa, "--p", p, "--method",
                          method, "--json"], None))
    return cmds


def run_checked(args, cwd, out_paths):
    before = snapshot(cwd)
    try:
        proc = run_cli(args, timeout=TIMEOUT, env={"MEASATTN_PROGRESS": "0"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"measattn {' '.join(map(str, args))} ran past {TIMEOUT} s")
    after = snapshot(cwd)
    allowed = {str(pathlib.Path(p).relative_to(cwd)) for p in out_paths if p is not None}
    for path in changed_paths(before, after):
        assert any(path == a or path.startswith(a + os.sep) for a in allowed), \
            f"{path} created or changed outside the outputs {sorted(allowed)}"
    assert proc.returncode in (0, 2), \
        f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    if proc.returncode == 2:
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("measattn: error: "), proc.stderr
        for p in out_paths:
            if p is not None and pathlib.Path(p).suffix:
                assert not pathlib.Path(p).exists(), f"{p} written although the run failed"
    return proc


def check_outputs(proc, out):
    text = proc.stdout
    if text.strip().startswith("{"):
        j = json.loads(text)
        check_json_finite(j)
        check_json_nulls(j)
        check_bounds(j)
    else:
        assert not NONFINITE_TEXT.search(text), text
    if out is not None and pathlib.Path(out).exists():
        files = [pathlib.Path(out)] if pathlib.Path(out).is_file() else \
            list(pathlib.Path(out).rglob("*.npy")) + list(pathlib.Path(out).rglob("*.json"))
        for f in files:
            if f.suffix == ".npy":
                a = np.load(f, allow_pickle=False)
                assert np.isfinite(a).all(), f"non-finite values in {f}"
            elif f.suffix == ".json":
                check_json_finite(json.loads(f.read_text()))


@pytest.mark.parametrize("inst", list(instances(40, 20261201)), ids=lambda i: f"case{i['id']}")
def test_cli_on_hostile_inputs(tmp_path, inst):
    files = materialize(tmp_path, inst)
    out = tmp_path / "out"
    out.mkdir()
    for name, args, out_path in cli_commands(files, out, inst):
        proc = run_checked(args, tmp_path, [out_path] if out_path is not None else [])
        if proc.returncode == 0:
            check_outputs(proc, out_path)


def test_analyze_on_hostile_inputs(tmp_path):
    """`analyze` (the slowest command) on a few hostile measures."""
    rng = np.random.default_rng(7)
    for k, scale in enumerate([1e-300, 1e150, 0.0]):
        case = tmp_path / f"c{k}"
        case.mkdir()
        x = save_npy(case / "x.npy", rng.standard_normal((6, 8)) * scale)
        w = np.ones(6)
        w[::2] = 0
        wpath = save_npy(case / "w.npy", w)
        proc = run_checked(["analyze", "--tokens", x, "--weights", wpath, "--out",
                            case / "report"], tmp_path, [case / "report"])
        if proc.returncode == 0:
            report = (case / "report" / "report.md").read_text()
            assert not NONFINITE_TEXT.search(report)


# ---- Python ----------------------------------------------------------------------------

def python_calls(ma, inst, x, y, w):
    d = inst["d"]
    model = ma.Model.random(d, 1, bias=True, seed=inst["seed"] % 1000)
    if inst["model_scale"] != 1.0:
        p = model.parameters()
        for k in ("w_q", "w_k", "w_v", "w_o", "b_q", "b_k", "b_v", "b_o"):
            if p[k] is not None:
                p[k] = p[k] * inst["model_scale"]
        model = ma.Model(**p)
    radius = max(inst["scale"] * 10 * math.sqrt(d), 1e-300)
    return [
        ("attend", lambda: model.attend(x, w)),
        ("kernel", lambda: model.kernel(x, w)),
        ("attend-sinkhorn", lambda: model.attend(x, w, normalization="sinkhorn",
                                                 sinkhorn_iters=5)),
        ("entropy", lambda: ma.attention_entropy(model, x, w)),
        ("gibbs", lambda: ma.gibbs(x[:, 0])),
        ("maxent_at_beta", lambda: ma.maxent_at_beta(x[:, 0], 1.0)),
        ("wasserstein-exact", lambda: ma.wasserstein(x, y, w, method="exact")),
        ("wasserstein-p1000", lambda: ma.wasserstein(x, y, w, p=1000.0, method="exact")),
        ("wasserstein-sinkhorn", lambda: ma.wasserstein(x, y, w, method="sinkhorn")),
        ("wasserstein-sliced", lambda: ma.wasserstein(x, y, w, method="sliced")),
        ("flow", lambda: ma.flow(ma.Model.canonical(d, 1.0), x, w,
                                 time=1.0, steps=3)),
        ("upper_bounds", lambda: ma.lipschitz_upper_bounds(model, radius)),
        ("lower_bound", lambda: ma.lipschitz_lower_bound(model, radius, atoms=2, restarts=2,
                                                         steps=3)),
        ("token_jacobian_norm", lambda: ma.token_jacobian_norm(model, x)),
    ]


SINKHORN_ONLY = {"entropic_cost", "transport_cost", "rounded_cost", "marginal_violation"}
# Upper bounds: +inf means no finite bound (documented), never NaN.
MAY_BE_INFINITE = {"upper", "best_w1", "gap", "output_radius"}
# p-th powers: +inf only when W_p^p itself exceeds the double range.
COST_FIELDS = {"cost", "entropic_cost", "transport_cost", "rounded_cost"}


def finite_result(value, name):
    """Every float and array reachable from a result object is finite (upper bounds may
    be +inf where documented), and value lies inside [lower, upper] when all are present."""
    if isinstance(value, np.ndarray):
        assert np.isfinite(value).all(), f"{name}: non-finite array"
        return
    if isinstance(value, float):
        assert math.isfinite(value), f"{name}: {value}"
        return
    got = {}
    for a in dir(value):
        if a.startswith("_"):
            continue
        try:
            v = getattr(value, a)
        except Exception:  # noqa: BLE001 - properties that need arguments
            continue
        if not callable(v):
            got[a] = v
    method = got.get("method", "sinkhorn")
    for a, v in got.items():
        if a in SINKHORN_ONLY:
            # documented: None when the method is not Sinkhorn, a float when it is
            assert (v is None) == (method != "sinkhorn"), f"{name}.{a} = {v!r} ({method})"
        if isinstance(v, float):
            assert not math.isnan(v), f"{name}.{a} is NaN"
            if a in MAY_BE_INFINITE:
                continue
            if a in COST_FIELDS and isinstance(got.get("value"), float) and math.isinf(v):
                # value^p may exceed the double range for huge p (documented: +inf then)
                assert got["value"] > 0 and \
                    math.log(got["value"]) * got.get("p", 1.0) > 709, f"{name}.cost = inf"
                continue
            assert math.isfinite(v), f"{name}.{a} = {v}"
        elif isinstance(v, np.ndarray) and v.dtype.kind == "f":
            assert np.isfinite(v).all(), f"{name}.{a}: non-finite array"
    if all(isinstance(got.get(k), float) for k in ("value", "lower", "upper")):
        lo, v, hi = got["lower"], got["value"], got["upper"]
        slack = 1e-9 * max(abs(lo), abs(v), 1e-300) if math.isfinite(hi) else 0
        assert lo - slack <= v <= hi + slack, f"{name}: value {v} outside [{lo}, {hi}]"


PY_SCRIPT = r"""
import json, math, sys, traceback
import numpy as np
sys.path.insert(0, sys.argv[1])
import test_hostile as th
import measattn as ma
inst = json.loads(sys.argv[2])
x = np.load(sys.argv[3]); y = np.load(sys.argv[4])
w = np.load(sys.argv[5]) if sys.argv[5] != "-" else None
failures = []
for name, call in th.python_calls(ma, inst, x, y, w):
    try:
        r = call()
    except ValueError:
        continue
    except BaseException as e:  # anything else breaks the contract
        failures.append(f"{name}: {type(e).__name__}: {e}")
        continue
    try:
        th.finite_result(r, name)
    except AssertionError as e:
        failures.append(str(e))
print(json.dumps(failures))
"""


@pytest.mark.parametrize("inst", list(instances(40, 424242)), ids=lambda i: f"case{i['id']}")
def test_python_on_hostile_inputs(tmp_path, inst):
    """Each case runs in a child interpreter, so an abort shows as a failure, not a crash."""
    files = materialize(tmp_path, inst)
    before = snapshot(tmp_path)
    env = dict(os.environ, MEASATTN_PROGRESS="0")
    try:
        proc = subprocess.run(
            ["/usr/bin/python3", "-c", PY_SCRIPT, str(pathlib.Path(__file__).parent),
             json.dumps(inst), str(files["x"]), str(files["y"]), str(files.get("w", "-"))],
            capture_output=True, text=True, timeout=TIMEOUT * 3, env=env, cwd=tmp_path)
    except subprocess.TimeoutExpired:
        pytest.fail("a Python call ran past its time limit")
    assert proc.returncode == 0, f"interpreter died ({proc.returncode}): {proc.stderr[-3000:]}"
    failures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not failures, "\n".join(failures)
    assert not changed_paths(before, snapshot(tmp_path)), "files changed"
