"""Every bad input to `measattn attend` is refused the same way: exit code 2, one
line on stderr naming the file or option and the reason, and no output file (an
existing output is left untouched). docs/theory.md#measure lists the invalid measures;
the rest are malformed .npy / safetensors files and bad options.
"""

import json
import os
import struct

import numpy as np
import pytest

from conftest import run_cli, save_npy, write_safetensors

E, HEADS, N = 8, 2, 6
RNG = np.random.default_rng(0)
TOKENS = RNG.standard_normal((N, E))


def mha_tensors(e=E, dtype=np.float64, e_out=None):
    e_out = e if e_out is None else e_out
    r = np.random.default_rng(1)
    return {"in_proj_weight": r.standard_normal((3 * e, e)).astype(dtype) / e,
            "in_proj_bias": r.standard_normal(3 * e).astype(dtype),
            "out_proj.weight": r.standard_normal((e_out, e)).astype(dtype) / e,
            "out_proj.bias": r.standard_normal(e_out).astype(dtype)}


def st_raw(path, header_obj, data=b"", header_len=None):
    text = header_obj if isinstance(header_obj, bytes) else json.dumps(header_obj).encode()
    n = len(text) if header_len is None else header_len
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", n) + text + data)
    return path


def npy_raw(path, dict_text, data):
    header = dict_text.encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + data)
    return path


def good_model(d):
    return write_safetensors(d / "model.safetensors", mha_tensors(), {"num_heads": str(HEADS)})


# Each case: (id, builder(d) -> (extra args replacing defaults, fragments expected in stderr)).
# Defaults: --model <good model> --tokens <good tokens> --out <d/out.npy>.

def weights_case(w, fragment):
    def build(d):
        return {"--weights": save_npy(d / "w.npy", w)}, ["--weights", "w.npy", fragment]
    return build


def tokens_case(x, fragment, name="x.npy", dtype=None):
    def build(d):
        return {"--tokens": save_npy(d / name, x, dtype)}, ["--tokens", name, fragment]
    return build


def tokens_file_case(writer, fragment):
    def build(d):
        return {"--tokens": writer(d / "tok.npy")}, ["--tokens", "tok.npy", fragment]
    return build


def model_case(writer, fragment):
    def build(d):
        return {"--model": writer(d / "bad.safetensors")}, ["bad.safetensors", fragment]
    return build


def with_nan(x, i, j, v):
    x = x.copy()
    x[i, j] = v
    return x


def valid_npy_bytes():
    import io
    buf = io.BytesIO()
    np.save(buf, TOKENS)
    return buf.getvalue()


def write_bytes(data):
    def writer(path):
        path.write_bytes(data)
        return path
    return writer


def tensors_with(**changes):
    t = mha_tensors()
    for k, v in changes.items():
        if v is None:
            del t[k.replace("__", ".")]
        else:
            t[k.replace("__", ".")] = v
    return t


def st_case(tensors, metadata):
    return lambda p: write_safetensors(p, tensors, metadata)


def offsets_out_of_bounds(p):
    t = mha_tensors()
    write_safetensors(p, t, {"num_heads": "2"})
    raw = p.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    header["out_proj.bias"]["data_offsets"] = [0, 10 ** 6]
    return st_raw(p, json.dumps(header).encode(), raw[8 + n:])


def edited_offsets(edit, extra=b""):
    """A valid model whose header's data_offsets `edit` changes; `extra` is appended."""
    def writer(p):
        write_safetensors(p, mha_tensors(), {"num_heads": "2"})
        raw = p.read_bytes()
        n = struct.unpack("<Q", raw[:8])[0]
        header = json.loads(raw[8:8 + n])
        edit(header)
        return st_raw(p, json.dumps(header).encode(), raw[8 + n:] + extra)
    return writer


def _offsets(**changes):
    def edit(header):
        for k, v in changes.items():
            header[k.replace("__", ".")]["data_offsets"] = v
    return edit


# mha_tensors() with E = 8 in float64: in_proj_weight [0, 1536), in_proj_bias
# [1536, 1728), out_proj.weight [1728, 2240), out_proj.bias [2240, 2304).
def valid_header_bad_length(p):
    return st_raw(p, {"__metadata__": {"num_heads": "2"}}, header_len=10 ** 9)


CASES = {
    # docs/theory.md#measure: invalid measures.
    "negative_weight": weights_case([1, 2, -0.5, 1, 1, 1], "negative"),
    "nan_weight": weights_case([1, 2, np.nan, 1, 1, 1], "NaN"),
    "inf_weight": weights_case([1, 2, np.inf, 1, 1, 1], "infinite"),
    "zero_total": weights_case(np.zeros(N), "zero"),
    "weights_length": weights_case(np.ones(N + 1), "7 weights for 6 tokens"),
    "weights_2d": weights_case(np.ones((2, 3)), "1-D"),
    "causal_first_weight_zero": lambda d: (
        {"--weights": save_npy(d / "w.npy", [0, 1, 1, 1, 1, 1]), "--causal": None},
        ["--weights", "w.npy", "query 0"]),
    "nan_coordinate": tokens_case(with_nan(TOKENS, 2, 3, np.nan), "row 2, column 3) is NaN"),
    "inf_coordinate": tokens_case(with_nan(TOKENS, 0, 0, -np.inf), "infinite"),
    "f32_overflow": lambda d: ({"--tokens": save_npy(d / "x.npy", with_nan(TOKENS, 1, 1, 1e300)),
                                "--dtype": "f32"}, ["--tokens", "x.npy", "overflows float32"]),
    "dimension_mismatch": tokens_case(TOKENS[:, :5], "dimension 5"),
    "empty_tokens": tokens_case(np.zeros((0, E)), "no tokens"),
    "tokens_3d": tokens_case(np.zeros((2, 2, E)), "1-D or 2-D"),
    "queries_dimension": lambda d: ({"--queries": save_npy(d / "q.npy", TOKENS[:, :7])},
                                    ["--queries", "q.npy", "dimension 7"]),
    "queries_nan": lambda d: ({"--queries": save_npy(d / "q.npy", with_nan(TOKENS, 5, 7, np.nan))},
                              ["--queries", "q.npy", "NaN"]),
    "queries_empty": lambda d: ({"--queries": save_npy(d / "q.npy", np.zeros((0, E)))},
                                ["--queries", "q.npy", "no queries"]),
    # Malformed .npy files.
    "npy_truncated": tokens_file_case(write_bytes(valid_npy_bytes()[:-5]), "truncated"),
    "npy_truncated_header": tokens_file_case(write_bytes(valid_npy_bytes()[:30]), "truncated"),
    "npy_int64": tokens_case(np.ones((N, E)), "'<i8'", dtype=np.int64),
    "npy_float16": tokens_case(np.ones((N, E)), "'<f2'", dtype=np.float16),
    "npy_complex": tokens_case(np.ones((N, E)), "'<c16'", dtype=np.complex128),
    "npy_fortran": tokens_file_case(
        lambda p: (np.save(p, np.asfortranarray(TOKENS)), p)[1], "Fortran"),
    "npy_big_endian": tokens_case(TOKENS, "big-endian", dtype=">f8"),
    "npy_bad_magic": tokens_file_case(write_bytes(b"\x93NUMPX" + valid_npy_bytes()[6:]),
                                      "bad magic"),
    "npy_garbage_header": tokens_file_case(lambda p: npy_raw(p, "{'descr': <f8}", b""),
                                           "malformed .npy header"),
    "npy_header_junk": tokens_file_case(lambda p: npy_raw(p, "\x00\x01garbage", b""),
                                        "malformed .npy header"),
    "npy_absurd_shape": tokens_file_case(
        lambda p: npy_raw(p, "{'descr': '<f8', 'fortran_order': False, "
                             "'shape': (4294967296, 4294967296), }", b"\0" * 64), "too large"),
    "npy_missing": lambda d: ({"--tokens": d / "absent.npy"}, ["absent.npy", "cannot open"]),
    "npy_directory": lambda d: ({"--tokens": d}, ["--tokens", "directory"]),
    "weights_bad_magic": lambda d: ({"--weights": write_bytes(b"not a npy file")(d / "w.npy")},
                                    ["--weights", "w.npy", "bad magic"]),
    # Malformed safetensors models.
    "st_bad_header_length": model_case(valid_header_bad_length, "exceeds the file size"),
    "st_short": model_case(write_bytes(b"\x10\0\0"), "shorter than"),
    "st_bad_json": model_case(lambda p: st_raw(p, b"{\"num_heads\": 2,,}"), "not valid JSON"),
    "st_not_object": model_case(lambda p: st_raw(p, b"[1, 2]"), "not a JSON object"),
    "st_missing_num_heads": model_case(st_case(mha_tensors(), {}), "missing num_heads"),
    "st_no_metadata": model_case(st_case(mha_tensors(), None), "missing num_heads"),
    "st_num_heads_not_dividing": model_case(st_case(mha_tensors(), {"num_heads": "3"}),
                                            "does not divide"),
    "st_num_heads_bad": model_case(st_case(mha_tensors(), {"num_heads": "two"}),
                                   "positive integer"),
    "st_bad_potential": model_case(st_case(mha_tensors(), {"num_heads": "2", "potential": "cos"}),
                                   "potential"),
    "st_bad_scale": model_case(st_case(mha_tensors(), {"num_heads": "2", "scale": "-3"}), "scale"),
    "st_wrong_shape": model_case(
        st_case(tensors_with(in_proj_weight=np.ones((24, 7))), {"num_heads": "2"}),
        "in_proj_weight: expected shape [3E, E] = [24, 8], got [24, 7]"),
    "st_wrong_bias_shape": model_case(
        st_case(tensors_with(out_proj__bias=np.ones(7)), {"num_heads": "2"}), "out_proj.bias"),
    "st_missing_tensor": model_case(
        st_case(tensors_with(out_proj__weight=None), {"num_heads": "2"}),
        "missing tensor out_proj.weight"),
    "st_unknown_tensor": model_case(
        st_case(tensors_with(bias_k=np.ones((1, 1, E))), {"num_heads": "2"}), "bias_k"),
    "st_i8": model_case(
        st_case(tensors_with(out_proj__bias=np.ones(E, dtype=np.int8)), {"num_heads": "2"}),
        "dtype I8 is not supported"),
    "st_f16": model_case(
        st_case(tensors_with(out_proj__bias=np.ones(E, dtype=np.float16)), {"num_heads": "2"}),
        "dtype F16"),
    "st_nan_weight": model_case(
        st_case(tensors_with(out_proj__weight=np.full((E, E), np.nan)), {"num_heads": "2"}),
        "NaN"),
    "st_offsets_out_of_bounds": model_case(offsets_out_of_bounds, "exceed the data buffer"),
    "st_offsets_overlap": model_case(
        edited_offsets(_offsets(out_proj__bias=[1536, 1600])),
        "in_proj_bias: data_offsets [1536, 1728] overlap those of out_proj.bias"),
    "st_offsets_same_range": model_case(
        edited_offsets(_offsets(in_proj_bias=[1728, 1920], out_proj__weight=[1536, 2048])),
        "overlap those of"),
    "st_offsets_gap": model_case(
        edited_offsets(_offsets(out_proj__bias=[2248, 2312]), extra=b"\0" * 8),
        "out_proj.bias: data_offsets [2248, 2312] leave a gap of 8 bytes after out_proj.weight"),
    "st_trailing_bytes": model_case(
        edited_offsets(lambda h: None, extra=b"\0" * 8),
        "the data buffer has 2312 bytes, the tensors' data_offsets cover 2304 (trailing bytes)"),
    "st_duplicate_key": model_case(
        lambda p: st_raw(p, b'{"__metadata__": {"num_heads": "2", "num_heads": "4"}}'),
        "duplicate key 'num_heads'"),
    "st_deep_json": model_case(
        lambda p: st_raw(p, b'{"a": ' + b'{"a": ' * 100000 + b'1' + b'}' * 100001),
        "nested too deeply"),
    "st_huge_number": model_case(
        lambda p: st_raw(p, b'{"__metadata__": {"num_heads": 1e99999}}'), "not valid JSON"),
    "st_metadata_not_string": model_case(
        lambda p: st_raw(p, b'{"__metadata__": {"num_heads": [2]}}'), "not a string"),
    "st_dev_zero": lambda d: ({"--model": "/dev/zero"}, ["/dev/zero", "too small"]),
    "st_dev_urandom": lambda d: ({"--model": "/dev/urandom"}, ["/dev/urandom", "header"]),
    "st_dev_null": lambda d: ({"--model": "/dev/null"}, ["/dev/null", "shorter than"]),
    "npy_dev_zero": lambda d: ({"--tokens": "/dev/zero"}, ["--tokens", "/dev/zero", "bad magic"]),
    "npy_dev_urandom": lambda d: ({"--tokens": "/dev/urandom"},
                                  ["--tokens", "/dev/urandom", "bad magic"]),
    "weights_dev_zero": lambda d: ({"--weights": "/dev/zero"},
                                   ["--weights", "/dev/zero", "bad magic"]),
    "st_kdim_vdim": model_case(
        st_case({"q_proj_weight": np.ones((E, E)), "k_proj_weight": np.ones((E, 3)),
                 "v_proj_weight": np.ones((E, 4)), "out_proj.weight": np.ones((E, E))},
                {"num_heads": "2"}), "vdim 4 differs from kdim 3"),
    "st_missing": lambda d: ({"--model": d / "absent.safetensors"},
                             ["absent.safetensors", "cannot open"]),
    "st_directory": lambda d: ({"--model": d}, ["directory"]),
    "st_npy_as_model": model_case(write_bytes(valid_npy_bytes()), "exceeds the file size"),
    # Options.
    "dtype": lambda d: ({"--dtype": "f16"}, ["--dtype", "f16"]),
    "normalization": lambda d: ({"--normalization": "softermax"}, ["--normalization"]),
    "sinkhorn_iters": lambda d: ({"--normalization": "sinkhorn", "--sinkhorn-iters": "-1"},
                                ["--sinkhorn-iters"]),
    "sinkhorn_cross": lambda d: ({"--normalization": "sinkhorn",
                                 "--queries": save_npy(d / "q.npy", TOKENS)},
                                ["--normalization", "self-attention"]),
    "residual_dims": lambda d: (
        {"--model": write_safetensors(d / "m5.safetensors", mha_tensors(e_out=5),
                                      {"num_heads": "2"}), "--residual": None},
        ["--residual", "5"]),
    "missing_model_option": lambda d: ({"--model": False}, ["--model"]),
    "missing_out_option": lambda d: ({"--out": False}, ["--out"]),
    "unknown_option": lambda d: ({"--frobnicate": "1"}, ["--frobnicate"]),
    "out_in_missing_directory": lambda d: ({"--out": d / "no" / "dir" / "out.npy"},
                                           ["out.npy"]),
}


@pytest.fixture(scope="module")
def good_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("good")
    return {"--model": good_model(d), "--tokens": save_npy(d / "tokens.npy", TOKENS)}


def build_args(options):
    args = ["attend"]
    for k, v in options.items():
        if v is False:
            continue
        args.append(k)
        if v is not None:
            args.append(str(v))
    return args


def test_good_inputs_succeed(tmp_path, good_files):
    """The baseline the bad cases start from works (so each failure is due to its change)."""
    out = tmp_path / "out.npy"
    proc = run_cli(build_args({**good_files, "--out": out}))
    assert proc.returncode == 0, proc.stderr
    assert np.load(out).shape == (N, E)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_line(tmp_path, good_files, case):
    d = tmp_path / "in"
    d.mkdir()
    changes, fragments = CASES[case](d)
    out_dir = tmp_path / "outdir"
    out_dir.mkdir()
    out = out_dir / "out.npy"
    options = {**good_files, "--out": out, **changes}
    out = options["--out"] if options["--out"] is not False else out

    for existing in (False, True):
        sentinel = b"previous output, must survive"
        if existing and os.path.isdir(os.path.dirname(out)):
            with open(out, "wb") as f:
                f.write(sentinel)
        # A timeout, so that a reader that hangs on a device fails the test.
        proc = run_cli(build_args(options), timeout=120)
        assert proc.returncode == 2, (proc.returncode, proc.stderr)
        lines = proc.stderr.splitlines()
        assert len(lines) == 1, proc.stderr
        assert proc.stderr.endswith("\n")
        for fragment in fragments:
            assert str(fragment) in lines[0], (fragment, lines[0])
        assert proc.stdout == ""
        if existing and os.path.isdir(os.path.dirname(out)):
            with open(out, "rb") as f:
                assert f.read() == sentinel
            os.remove(out)
        else:
            assert not os.path.exists(out)
        # No temporary files are left next to the output.
        assert os.listdir(out_dir) == []


def test_non_finite_result_is_refused_or_finite(tmp_path, good_files):
    """Coordinates so large that logits overflow float64: either a finite answer or
    a clean refusal (exit 2, one line, no output) -- never NaN in a file."""
    out = tmp_path / "out.npy"
    x = save_npy(tmp_path / "x.npy", TOKENS * 1e200)
    proc = run_cli(build_args({**good_files, "--tokens": x, "--out": out}))
    if proc.returncode == 0:
        assert np.all(np.isfinite(np.load(out)))
    else:
        assert proc.returncode == 2 and len(proc.stderr.splitlines()) == 1, proc.stderr
        assert not out.exists()


def test_output_is_a_directory(tmp_path, good_files):
    target = tmp_path / "dir.npy"
    target.mkdir()
    proc = run_cli(build_args({**good_files, "--out": target}))
    assert proc.returncode == 2
    assert len(proc.stderr.splitlines()) == 1 and "dir.npy" in proc.stderr
    assert target.is_dir() and os.listdir(target) == []
    assert sorted(os.listdir(tmp_path)) == ["dir.npy"]


# ---- FIFOs: read in order, never more than the header declares (plus one byte) ----

def _feed_fifo(path, data, endless=False):
    """Writes `data` (then zeros forever when endless) into the FIFO at `path` from
    a thread; stops when the reader closes its end."""
    import threading

    def run():
        try:
            with open(path, "wb") as f:
                f.write(data)
                zeros = b"\0" * (1 << 16)
                while endless:
                    f.write(zeros)
        except (BrokenPipeError, OSError):
            pass

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _fifo_case(tmp_path, good_files, option, data, endless):
    fifo = tmp_path / ("input.fifo")
    os.mkfifo(fifo)
    writer = _feed_fifo(fifo, data, endless)
    out = tmp_path / "out.npy"
    proc = run_cli(build_args({**good_files, option: fifo, "--out": out}), timeout=120)
    writer.join(timeout=60)
    assert not writer.is_alive()
    return proc, out


@pytest.mark.parametrize("option", ["--tokens", "--model"])
def test_fifo_input_is_read_in_order(tmp_path, good_files, option):
    data = pathlib_bytes(good_files[option])
    proc, out = _fifo_case(tmp_path, good_files, option, data, endless=False)
    assert proc.returncode == 0, proc.stderr
    assert np.load(out).shape == (N, E)


@pytest.mark.parametrize("option", ["--tokens", "--model"])
def test_fifo_with_endless_data_is_refused(tmp_path, good_files, option):
    """A valid file followed by an endless stream of zeros: refused after one
    byte more than the header declares (it used to grow memory without bound)."""
    data = pathlib_bytes(good_files[option])
    proc, out = _fifo_case(tmp_path, good_files, option, data, endless=True)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "trailing bytes" in proc.stderr
    assert "input.fifo" in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("option", ["--tokens", "--model"])
def test_fifo_truncated_is_refused(tmp_path, good_files, option):
    data = pathlib_bytes(good_files[option])[:-3]
    proc, out = _fifo_case(tmp_path, good_files, option, data, endless=False)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "truncated" in proc.stderr
    assert not out.exists()


def test_fifo_huge_declared_shape_is_refused_before_reading(tmp_path, good_files):
    header = ("{'descr': '<f8', 'fortran_order': False, 'shape': (1099511627776, 8), }").encode()
    header += b" " * ((64 - (10 + len(header) + 1) % 64) % 64) + b"\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header
    proc, out = _fifo_case(tmp_path, good_files, "--tokens", data, endless=True)
    assert proc.returncode == 2, proc.stderr
    assert "more than this machine's memory" in proc.stderr, proc.stderr


def pathlib_bytes(path):
    with open(path, "rb") as f:
        return f.read()
