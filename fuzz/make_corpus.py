#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (small valid files) into fuzz/corpus/.

Run with Debian's python3 (needs NumPy): /usr/bin/python3 fuzz/make_corpus.py
"""
import json
import pathlib
import struct
import zlib

import numpy as np

here = pathlib.Path(__file__).resolve().parent
npy_dir = here / "corpus" / "npy"
st_dir = here / "corpus" / "safetensors"
npy_dir.mkdir(parents=True, exist_ok=True)
st_dir.mkdir(parents=True, exist_ok=True)
rng = np.random.default_rng(0)

# .npy: several shapes and both dtypes, versions 1.0 and 2.0.
arrays = {
    "vec_f8": rng.standard_normal(5),
    "mat_f8": rng.standard_normal((3, 4)),
    "mat_f4": rng.standard_normal((2, 3)).astype(np.float32),
    "cube_f8": rng.standard_normal((2, 2, 2)),
    "empty_f8": np.zeros((0, 3)),
    "scalar_f8": np.array(1.5),
}
for name, a in arrays.items():
    np.save(npy_dir / f"{name}.npy", a)
with open(npy_dir / "v2_f8.npy", "wb") as f:
    np.lib.format.write_array(f, rng.standard_normal((2, 2)), version=(2, 0))
with open(npy_dir / "v3_f4.npy", "wb") as f:
    np.lib.format.write_array(f, rng.standard_normal(3).astype(np.float32), version=(3, 0))


def safetensors(tensors, metadata):
    header = {"__metadata__": metadata}
    chunks, offset = [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": "F32" if a.dtype == np.float32 else "F64",
                        "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def mha(e, dout, bias, dtype, kdim=None):
    t = {}
    if kdim is None:
        t["in_proj_weight"] = rng.standard_normal((3 * e, e)).astype(dtype)
    else:
        t["q_proj_weight"] = rng.standard_normal((e, e)).astype(dtype)
        t["k_proj_weight"] = rng.standard_normal((e, kdim)).astype(dtype)
        t["v_proj_weight"] = rng.standard_normal((e, kdim)).astype(dtype)
    if bias:
        t["in_proj_bias"] = rng.standard_normal(3 * e).astype(dtype)
    t["out_proj.weight"] = rng.standard_normal((dout, e)).astype(dtype)
    if bias:
        t["out_proj.bias"] = rng.standard_normal(dout).astype(dtype)
    return t


seeds = {
    "packed_f64": (mha(4, 4, True, np.float64), {"num_heads": "2"}),
    "packed_f32_l2": (mha(4, 4, False, np.float32), {"num_heads": "1", "potential": "l2",
                                                       "scale": "0.5"}),
    "separate_f64": (mha(2, 3, True, np.float64, kdim=3), {"num_heads": "2", "format": "pt"}),
    "separate_f32": (mha(2, 2, False, np.float32, kdim=1), {"num_heads": "1"}),
}
for name, (tensors, meta) in seeds.items():
    (st_dir / f"{name}.safetensors").write_bytes(safetensors(tensors, meta))

# safetensors_header: the JSON header alone, after two bytes giving the length
# of the data buffer (fuzz_safetensors_header.cpp builds the file around it).
header_dir = here / "corpus" / "safetensors_header"
header_dir.mkdir(parents=True, exist_ok=True)
for name, (tensors, meta) in seeds.items():
    raw = safetensors(tensors, meta)
    n = struct.unpack("<Q", raw[:8])[0]
    (header_dir / f"{name}.json").write_bytes(struct.pack("<H", len(raw) - 8 - n) + raw[8:8 + n])


# Flow checkpoints, format version 2 (src/flow/checkpoint.hpp): magic, version,
# CRC-32 of everything but itself, body length, body.
def matrix(a, fmt):
    rows, cols = a.shape
    return struct.pack("<qq", rows, cols) + np.asarray(a, dtype=fmt).tobytes(order="C")


def checkpoint(n, d, frames, energies, clusters, dopri, fmt):
    y = rng.standard_normal((n, d))
    body = struct.pack("<IQ", np.dtype(fmt).itemsize, 0x1234_5678_9ABC_DEF0)
    body += struct.pack("<dqqqqddB", 0.5, 4, 1 if dopri else 0, 12, 5, 0.125 if dopri else 0,
                        1e-4, 0)
    body += matrix(y, fmt)
    body += matrix(rng.standard_normal((n, d)) if dopri else np.zeros((0, 0)), fmt)
    body += struct.pack("<q", frames)
    for f in range(frames):
        body += struct.pack("<dq", 0.25 * f, 2 * f) + matrix(rng.standard_normal((n, d)), fmt)
    body += struct.pack("<q", frames if energies else 0)
    body += b"".join(struct.pack("<d", 1.5 + f) for f in range(frames if energies else 0))
    body += struct.pack("<q", frames if clusters else 0)
    body += b"".join(struct.pack("<q", n) for _ in range(frames if clusters else 0))
    head = b"MAFLOWCK" + struct.pack("<I", 2)
    length = struct.pack("<Q", len(body))
    crc = zlib.crc32(head + length + body)
    return head + struct.pack("<I", crc) + length + body


ck_dir = here / "corpus" / "checkpoint"
ck_dir.mkdir(parents=True, exist_ok=True)
for name, args in {"euler_f64": (3, 2, 0, False, False, False, np.float64),
                   "frames_f64": (2, 3, 2, True, True, False, np.float64),
                   "dopri5_f64": (3, 2, 1, False, True, True, np.float64),
                   "frames_f32": (2, 2, 2, True, False, False, np.float32)}.items():
    (ck_dir / f"{name}.ck").write_bytes(checkpoint(*args))
# Transformer checkpoints (fuzz_transformer): a 4-byte config length, config.json,
# then the safetensors bytes (length 0xFFFFFFFF: no config, a torch state dict).
tf_dir = here / "corpus" / "transformer"
tf_dir.mkdir(parents=True, exist_ok=True)


def tf_seed(config, tensors, metadata=None):
    st = safetensors({k: rng.standard_normal(s) * 0.3 for k, s in tensors.items()},
                     metadata or {"format": "pt"})
    if config is None:
        return struct.pack("<I", 0xFFFFFFFF) + st
    raw = json.dumps(config).encode()
    return struct.pack("<I", len(raw)) + raw + st


d, ff = 4, 6
bert = {"embeddings.word_embeddings.weight": (5, d), "embeddings.position_embeddings.weight": (4, d),
        "embeddings.token_type_embeddings.weight": (2, d), "embeddings.LayerNorm.weight": (d,),
        "embeddings.LayerNorm.bias": (d,)}
for m in ["attention.self.query", "attention.self.key", "attention.self.value",
          "attention.output.dense"]:
    bert[f"encoder.layer.0.{m}.weight"] = (d, d)
    bert[f"encoder.layer.0.{m}.bias"] = (d,)
for m in ["attention.output.LayerNorm", "output.LayerNorm"]:
    bert[f"encoder.layer.0.{m}.weight"] = (d,)
    bert[f"encoder.layer.0.{m}.bias"] = (d,)
bert.update({"encoder.layer.0.intermediate.dense.weight": (ff, d),
             "encoder.layer.0.intermediate.dense.bias": (ff,),
             "encoder.layer.0.output.dense.weight": (d, ff), "encoder.layer.0.output.dense.bias": (d,)})
(tf_dir / "bert.bin").write_bytes(tf_seed(
    {"model_type": "bert", "hidden_size": d, "num_attention_heads": 2, "num_hidden_layers": 1,
     "intermediate_size": ff, "vocab_size": 5, "max_position_embeddings": 4,
     "hidden_act": "gelu"}, bert))
gpt2 = {"wte.weight": (5, d), "wpe.weight": (4, d), "ln_f.weight": (d,), "ln_f.bias": (d,),
        "h.0.ln_1.weight": (d,), "h.0.ln_1.bias": (d,), "h.0.ln_2.weight": (d,),
        "h.0.ln_2.bias": (d,), "h.0.attn.c_attn.weight": (d, 3 * d), "h.0.attn.c_attn.bias": (3 * d,),
        "h.0.attn.c_proj.weight": (d, d), "h.0.attn.c_proj.bias": (d,),
        "h.0.mlp.c_fc.weight": (d, ff), "h.0.mlp.c_fc.bias": (ff,),
        "h.0.mlp.c_proj.weight": (ff, d), "h.0.mlp.c_proj.bias": (d,)}
(tf_dir / "gpt2.bin").write_bytes(tf_seed(
    {"model_type": "gpt2", "n_embd": d, "n_head": 2, "n_layer": 1, "n_positions": 4,
     "n_inner": ff, "vocab_size": 5}, gpt2))
enc = {"self_attn.in_proj_weight": (3 * d, d), "self_attn.in_proj_bias": (3 * d,),
       "self_attn.out_proj.weight": (d, d), "self_attn.out_proj.bias": (d,),
       "linear1.weight": (ff, d), "linear1.bias": (ff,), "linear2.weight": (d, ff),
       "linear2.bias": (d,), "norm1.weight": (d,), "norm1.bias": (d,), "norm2.weight": (d,),
       "norm2.bias": (d,)}
(tf_dir / "torch_layer.bin").write_bytes(tf_seed(None, enc, {
    "d_model": str(d), "nhead": "2", "dim_feedforward": str(ff), "norm_first": "true",
    "activation": "gelu"}))
stacked = {f"layers.{i}.{k}": s for i in range(2) for k, s in enc.items()}
stacked.update({"norm.weight": (d,), "norm.bias": (d,)})
(tf_dir / "torch_stack.bin").write_bytes(tf_seed(
    {"model_type": "torch_encoder", "d_model": d, "nhead": 2, "dim_feedforward": ff}, stacked))

print(f"wrote {len(list(npy_dir.iterdir()))} npy, {len(list(st_dir.iterdir()))} safetensors, "
      f"{len(list(header_dir.iterdir()))} header, {len(list(ck_dir.iterdir()))} checkpoint and "
      f"{len(list(tf_dir.iterdir()))} transformer seeds")
