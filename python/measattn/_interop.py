"""PyTorch and Hugging Face modules in: attention modules as :class:`Model`,
whole encoders and pretrained models as :class:`Transformer`.

Nothing here imports torch or transformers: modules are read by duck typing
(their parameters and configuration attributes), so measattn stays importable
without them. Every conversion goes through the library's own checked loaders,
so a module it cannot represent raises ValueError naming the attribute.
"""

from __future__ import annotations

import json
import os
import struct
import tempfile
from typing import Any, Dict, Optional

import numpy as _np


def _array(t: Any) -> _np.ndarray:
    """A float array from a tensor or array (detached, on the CPU)."""
    if hasattr(t, "detach"):
        t = t.detach()
        if hasattr(t, "cpu"):
            t = t.cpu()
        if str(getattr(t, "dtype", "")) in ("torch.float16", "torch.bfloat16"):
            t = t.float()
        t = t.numpy()
    a = _np.asarray(t)
    if a.dtype not in (_np.float32, _np.float64):
        a = a.astype(_np.float64)
    return a


def _target_dtype(arrays, dtype: Any) -> str:
    if dtype is not None:
        name = _np.dtype(dtype).name
        if name not in ("float32", "float64"):
            raise ValueError(f"dtype: expected float32 or float64, got {name}")
        return name
    return "float32" if all(a.dtype == _np.float32 for a in arrays) else "float64"


def write_safetensors(path: str, tensors: Dict[str, _np.ndarray],
                      metadata: Optional[Dict[str, str]] = None, dtype: str = "float64") -> None:
    """Writes `tensors` as a safetensors file (F32 or F64, little-endian, C
    order) with string `metadata`, without the safetensors package."""
    code, np_dtype = ("F64", "<f8") if dtype == "float64" else ("F32", "<f4")
    header: Dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blobs, offset = [], 0
    for name, a in tensors.items():
        raw = _np.ascontiguousarray(a, dtype=np_dtype).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---- attention modules -> Model --------------------------------------------


def _hf_bert_attention(module: Any, dtype: Any):
    """Hugging Face BertAttention (self: query/key/value; output.dense) or a
    bare BertSelfAttention (no output projection: W_O = I)."""
    from . import Model

    sa = module.self if hasattr(module, "self") else module
    kind = getattr(sa, "position_embedding_type", "absolute")
    if kind != "absolute":
        raise ValueError(f"module.position_embedding_type: '{kind}' is not supported "
                         "(relative position logits are not a dot potential)")
    if getattr(sa, "is_decoder", False):
        raise ValueError("module.is_decoder: decoder (cross-)attention is not supported")
    heads = int(sa.num_attention_heads)
    arrays = [_array(sa.query.weight), _array(sa.key.weight), _array(sa.value.weight)]
    biases = [_array(l.bias) if getattr(l, "bias", None) is not None else None
              for l in (sa.query, sa.key, sa.value)]
    if hasattr(module, "output") and hasattr(module.output, "dense"):
        w_o = _array(module.output.dense.weight)
        b_o = _array(module.output.dense.bias) if module.output.dense.bias is not None else None
    else:
        w_o, b_o = _np.eye(arrays[0].shape[0]), None
    name = _target_dtype(arrays + [w_o], dtype)
    return Model(arrays[0], arrays[1], arrays[2], w_o, num_heads=heads, b_q=biases[0],
                 b_k=biases[1], b_v=biases[2], b_o=b_o, dtype=name)


def _hf_gpt2_attention(module: Any, dtype: Any):
    """Hugging Face GPT2Attention: fused c_attn (Conv1D, weight [d, 3d] stored
    [in, out]) and c_proj. The Model is the layer's map; GPT-2 attends causally,
    so pass causal=True when attending."""
    from . import Model

    if getattr(module, "is_cross_attention", False):
        raise ValueError("module.is_cross_attention: cross-attention is not supported")
    if not getattr(module, "scale_attn_weights", True):
        raise ValueError("module.scale_attn_weights: False (no 1/sqrt(head_dim)) is not supported")
    if getattr(module, "scale_attn_by_inverse_layer_idx", False):
        raise ValueError("module.scale_attn_by_inverse_layer_idx: True is not supported")
    heads = int(module.num_heads)
    w = _array(module.c_attn.weight)  # [d, 3d]
    b = _array(module.c_attn.bias)
    d = w.shape[0]
    if w.shape != (d, 3 * d):
        raise ValueError(f"module.c_attn.weight: shape {list(w.shape)}, expected [{d}, {3 * d}]")
    w_o = _array(module.c_proj.weight).T
    b_o = _array(module.c_proj.bias)
    name = _target_dtype([w, w_o], dtype)
    return Model(w[:, :d].T, w[:, d:2 * d].T, w[:, 2 * d:].T, w_o, num_heads=heads,
                 b_q=b[:d], b_k=b[d:2 * d], b_v=b[2 * d:], b_o=b_o, dtype=name)


def attention_model_from_module(module: Any, dtype: Any = None):
    """The attention module of a Hugging Face model as a Model, or None when
    `module` is not one of the supported kinds."""
    if hasattr(module, "c_attn") and hasattr(module, "c_proj"):
        return _hf_gpt2_attention(module, dtype)
    sa = module.self if hasattr(module, "self") else module
    if all(hasattr(sa, n) for n in ("query", "key", "value", "num_attention_heads")):
        return _hf_bert_attention(module, dtype)
    return None


# ---- encoders and pretrained models -> Transformer --------------------------

_ACTIVATIONS = {"relu": "relu", "gelu": "gelu"}


def _encoder_activation(layer: Any) -> str:
    """relu or gelu of an nn.TransformerEncoderLayer (torch stores a function,
    a module, or, in 1.12+, a code: activation_relu_or_gelu 1 = relu, 2 = gelu)."""
    code = getattr(layer, "activation_relu_or_gelu", None)
    if code == 1:
        return "relu"
    if code == 2:
        return "gelu"
    act = getattr(layer, "activation", None)
    name = getattr(act, "__name__", None) or type(act).__name__
    name = str(name).lower()
    if name in _ACTIVATIONS:
        return _ACTIVATIONS[name]
    if name == "gelu" or "gelu" in name and "approx" not in name:
        return "gelu"
    raise ValueError(f"module.activation: {name!r} is not supported (relu or gelu)")


def _encoder_layer_state(layer: Any, prefix: str, out: Dict[str, _np.ndarray]) -> Dict[str, Any]:
    """The tensors of one nn.TransformerEncoderLayer under `prefix`, and its
    configuration."""
    sa = layer.self_attn
    if getattr(sa, "bias_k", None) is not None or getattr(sa, "add_zero_attn", False):
        raise ValueError("module.self_attn: add_bias_kv / add_zero_attn are not supported")
    if getattr(sa, "in_proj_weight", None) is None:
        raise ValueError("module.self_attn: separate q/k/v projections (kdim/vdim) are not "
                         "supported in an encoder layer")
    for name, t in layer.state_dict().items():
        out[prefix + name] = _array(t)
    return {
        "d_model": int(sa.embed_dim),
        "nhead": int(sa.num_heads),
        "dim_feedforward": int(layer.linear1.out_features),
        "norm_first": bool(getattr(layer, "norm_first", False)),
        "activation": _encoder_activation(layer),
        "layer_norm_eps": float(layer.norm1.eps),
    }


def transformer_from_torch(module: Any, dtype: Any = None):
    """A :class:`Transformer` from a PyTorch ``nn.TransformerEncoderLayer`` or
    ``nn.TransformerEncoder``, or from a Hugging Face model (an object with
    ``config`` and ``save_pretrained``, e.g. ``BertModel``, ``GPT2Model``).

    The weights are written to a temporary checkpoint in a private temporary
    directory (removed afterwards) and read back by :meth:`Transformer.load`,
    so the same checks apply as to a file. dtype: None = float32 when every
    parameter is float32, else float64; or "float32" / "float64". The model is
    the module in eval mode (dropout is not modelled).
    """
    from . import Transformer

    with tempfile.TemporaryDirectory(prefix="measattn-") as tmp:
        if hasattr(module, "config") and hasattr(module, "save_pretrained"):
            module.save_pretrained(tmp, safe_serialization=True)
            if dtype is None and hasattr(module, "parameters"):
                first = next(iter(module.parameters()), None)
                dtype = _target_dtype([_array(first.reshape(-1)[:1])] if first is not None
                                      else [], None)
            return Transformer.load(tmp, dtype=dtype)
        tensors: Dict[str, _np.ndarray] = {}
        if hasattr(module, "layers") and hasattr(module, "num_layers"):
            configs = [_encoder_layer_state(layer, f"layers.{i}.", tensors)
                       for i, layer in enumerate(module.layers)]
            if not configs:
                raise ValueError("module.layers: an encoder without layers")
            if any(c != configs[0] for c in configs):
                raise ValueError("module.layers: the layers differ in configuration")
            config = dict(configs[0], num_layers=len(configs))
            if getattr(module, "norm", None) is not None:
                for name, t in module.norm.state_dict().items():
                    tensors["norm." + name] = _array(t)
        elif hasattr(module, "self_attn") and hasattr(module, "linear1"):
            config = _encoder_layer_state(module, "", tensors)
        else:
            raise ValueError("module: expected nn.TransformerEncoderLayer, nn.TransformerEncoder "
                             f"or a Hugging Face model, got {type(module).__name__}")
        name = _target_dtype(list(tensors.values()), dtype)
        config["model_type"] = "torch_encoder"
        meta = {k: (str(v).lower() if isinstance(v, bool) else str(v)) for k, v in config.items()}
        path = os.path.join(tmp, "model.safetensors")
        write_safetensors(path, tensors, meta, dtype=name)
        return Transformer.load(path, dtype=name)
