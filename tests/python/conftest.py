"""Shared pytest helpers for the measattn CLI and Python module tests.

Add new fixtures and helpers at the end of this file; do not rewrite existing ones
(several test files depend on them).
"""

import json
import os
import pathlib
import struct
import subprocess

import numpy as np
import pytest

REPO_ROOT = pathlib.Path(os.environ.get("MEASATTN_SOURCE_DIR",
                                        pathlib.Path(__file__).resolve().parents[2]))


def measattn_bin():
    """Path of the measattn CLI: $MEASATTN_BIN, else <repo>/build/apps/measattn."""
    path = os.environ.get("MEASATTN_BIN")
    if path:
        return path
    return str(REPO_ROOT / "build" / "apps" / "measattn")


def run_cli(args, check=False, env=None, timeout=600):
    """Runs `measattn *args` and returns the CompletedProcess (text mode, captured).

    With check=True, a non-zero exit raises AssertionError showing stderr.
    """
    cmd = [measattn_bin()] + [str(a) for a in args]
    full_env = dict(os.environ)
    full_env.setdefault("OMP_NUM_THREADS", "2")
    if env:
        full_env.update(env)
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"measattn {' '.join(cmd[1:])} exited {proc.returncode}:\n{proc.stderr}")
    return proc


def save_npy(path, array, dtype=None):
    """Saves `array` (as float64 unless dtype is given) to `path` and returns the path."""
    a = np.asarray(array, dtype=dtype if dtype is not None else np.float64)
    np.save(path, a, allow_pickle=False)
    return path


def load_npy(path):
    return np.load(path, allow_pickle=False)


_ST_DTYPES = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64",
              np.dtype(np.int8): "I8", np.dtype(np.int32): "I32", np.dtype(np.int64): "I64",
              np.dtype(np.float16): "F16"}


def write_safetensors(path, tensors, metadata=None):
    """Writes a safetensors file without the safetensors package.

    `tensors` maps names to NumPy arrays (written C-order little-endian with their
    own dtype); `metadata` maps strings to strings. Returns the path.
    """
    header = {}
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    chunks = []
    offset = 0
    for name, array in tensors.items():
        a = np.ascontiguousarray(array)
        a = a.astype(a.dtype.newbyteorder("<"), copy=False)
        raw = a.tobytes()
        header[name] = {"dtype": _ST_DTYPES[np.dtype(a.dtype.name)],
                        "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for raw in chunks:
            f.write(raw)
    return path


def mha_state_dict(module_or_state_dict):
    """The tensors of an nn.MultiheadAttention (or its state dict) as NumPy arrays."""
    sd = module_or_state_dict
    if hasattr(sd, "state_dict"):
        sd = sd.state_dict()
    return {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
            for k, v in sd.items()}


def save_mha_safetensors(path, module_or_state_dict, num_heads, potential=None, scale=None,
                         dtype=np.float64, extra_metadata=None):
    """Saves an nn.MultiheadAttention (or a state dict of NumPy arrays / tensors)
    as a measattn model: tensors in `dtype`, metadata num_heads/potential/scale as
    strings. Returns the path."""
    tensors = {k: np.asarray(v, dtype=dtype) for k, v in mha_state_dict(module_or_state_dict).items()}
    metadata = {"num_heads": str(num_heads)}
    if potential is not None:
        metadata["potential"] = str(potential)
    if scale is not None:
        metadata["scale"] = repr(float(scale))
    if extra_metadata:
        metadata.update(extra_metadata)
    return write_safetensors(path, tensors, metadata)


@pytest.fixture
def cli():
    """The run_cli helper as a fixture."""
    return run_cli
