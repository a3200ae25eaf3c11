#!/usr/bin/env python3
"""The CMoE paper's reference MoE layer in PyTorch, timed on a CUDA GPU: the baseline of
cmoe-moe-bench ("our MoE layer vs the reference per-expert loop", docs/performance.md).

The layer is written the way the reference implementation runs it (BF16, eager PyTorch):
  router   gate/up scores (N_r, d) each, s = |up * silu(gate)|, p = softmax(s) in fp32,
           idx = topk(p + b, k), gate weights w = 1 (training-free: u = 0)
  shared   one merged SwiGLU MLP of width m_s = N_s * floor(d_h / N), run densely
  routed   a Python loop over the N_r experts: torch.where on the top-k indices finds the
           expert's tokens (a host sync per expert), gather, SwiGLU MLP of the expert's width,
           index_add back scaled by the weights
and next to it the dense SwiGLU FFN (F.linear gate, up, silu * up, down).

Shapes, configurations, batch sizes, the routing (uniform, or skewed with the bias
b_j = -skew * ln(j + 1) on p) and the weight statistics (uniform, variance 1/fan-in, seeded) are
those of cmoe-moe-bench; the JSON has the same layout: dense.results[B] and
configs[NAME].results[B] with "ms" the median of --reps CUDA-event timings after --warmup steps,
each step on fresh random inputs.

  python3 scripts/moe_reference.py --config S2A2E16,S3A3E8 --batch 1,8,32 --json ref.json

Exits 1 with a message when PyTorch or a CUDA device is missing, 2 on a bad flag.
"""
import argparse
import json
import math
import re
import statistics
import sys


def parse_config(text, ffn):
    """'S2A2E16' -> dict of the shape; ValueError naming --config otherwise."""
    m = re.fullmatch(r"S(\d+)A(\d+)E(\d+)", text.upper())
    if not m:
        raise ValueError(f"--config '{text}': expected dense or SxAyEz, e.g. S2A2E16")
    shared, activated, experts = (int(g) for g in m.groups())
    routed = experts - shared
    if experts < 2 or shared >= experts or not 1 <= activated <= routed or ffn < experts:
        raise ValueError(f"--config '{text}': need 0 <= x < z, 1 <= y <= z - x, --ffn >= z")
    shared_width = shared * (ffn // experts)
    rest = ffn - shared_width
    widths = [rest // routed + (1 if e < rest % routed else 0) for e in range(routed)]
    return {"name": text.upper(), "shared": shared, "activated": activated, "experts": experts,
            "routed": routed, "shared_width": shared_width, "widths": widths}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dim", type=int, default=4096, help="model width d")
    parser.add_argument("--ffn", type=int, default=11008, help="FFN hidden width d_h")
    parser.add_argument("--config", default="S2A2E16",
                        help="comma-separated SxAyEz; 'dense' alone times the dense FFN only")
    parser.add_argument("--batch", default="1,8,32,128,256,2048", help="comma-separated rows")
    parser.add_argument("--routing", choices=["uniform", "skewed"], default="uniform")
    parser.add_argument("--skew", type=float, default=0.05, help="skewed: b_j = -skew ln(j+1)")
    parser.add_argument("--reps", type=int, default=10, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default="cuda", help="a torch CUDA device, e.g. cuda:0")
    parser.add_argument("--json", default="", help="also write the JSON to this file")
    args = parser.parse_args(argv)
    if args.dim < 1 or args.ffn < 1 or args.reps < 1 or args.warmup < 0:
        parser.error("--dim, --ffn and --reps must be >= 1, --warmup >= 0")
    if not math.isfinite(args.skew) or args.skew < 0:
        parser.error(f"--skew {args.skew} must be finite and >= 0")
    try:
        args.batches = [int(b) for b in args.batch.split(",")]
    except ValueError:
        parser.error(f"--batch '{args.batch}': expected comma-separated integers, e.g. 1,8,32")
    if any(b < 1 for b in args.batches):
        parser.error(f"--batch '{args.batch}': every batch size must be >= 1")
    try:
        args.shapes = [parse_config(c, args.ffn) for c in args.config.split(",")
                       if c.lower() != "dense"]
    except ValueError as e:
        parser.error(str(e))
    return args


def import_torch(device):
    try:
        import torch
    except ImportError:
        sys.exit("moe_reference.py: error: PyTorch is not installed (import torch failed); "
                 "this reference runs on a CUDA GPU")
    if not torch.cuda.is_available():
        sys.exit("moe_reference.py: error: torch.cuda.is_available() is False: no CUDA GPU "
                 f"(torch {torch.__version__})")
    if not device.startswith("cuda"):
        sys.exit(f"moe_reference.py: error: --device {device}: only CUDA devices are timed")
    return torch


class Layers:
    """Random BF16 weights of the dense FFN and every carved configuration."""

    def __init__(self, torch, args):
        self.torch = torch
        self.F = torch.nn.functional
        self.dev = torch.device(args.device)
        self.gen = torch.Generator(device=self.dev).manual_seed(args.seed)
        d, ffn = args.dim, args.ffn
        self.dense = [self.weight(ffn, d), self.weight(ffn, d), self.weight(d, ffn)]
        self.carved = [self.carve(s, d, ffn, args) for s in args.shapes]

    def weight(self, rows, cols, fan_in=None):
        a = math.sqrt(3.0 / (fan_in or cols))
        w = self.torch.empty(rows, cols, device=self.dev, dtype=self.torch.float32)
        return w.uniform_(-a, a, generator=self.gen).to(self.torch.bfloat16)

    def carve(self, s, d, ffn, args):
        n_r, m_s = s["routed"], s["shared_width"]
        bias = [-args.skew * math.log(j + 1.0) if args.routing == "skewed" else 0.0
                for j in range(n_r)]
        return {
            "shape": s,
            "router_gate": self.weight(n_r, d), "router_up": self.weight(n_r, d),
            "bias": self.torch.tensor(bias, device=self.dev, dtype=self.torch.float32),
            "shared": [self.weight(m_s, d), self.weight(m_s, d), self.weight(d, m_s)]
            if m_s > 0 else None,
            "experts": [[self.weight(w, d), self.weight(w, d), self.weight(d, w, fan_in=ffn)]
                        for w in s["widths"]],
        }

    def mlp(self, x, w):
        gate, up, down = w
        return self.F.linear(self.F.silu(self.F.linear(x, gate)) * self.F.linear(x, up), down)

    def dense_ffn(self, x):
        return self.mlp(x, self.dense)

    def reference_moe(self, c, x):
        """The reference's per-expert loop. Returns (out, top-k indices)."""
        F, torch = self.F, self.torch
        k = c["shape"]["activated"]
        gate = F.linear(x, c["router_gate"])
        up = F.linear(x, c["router_up"])
        p = (up * F.silu(gate)).abs().float().softmax(dim=-1)
        _, idx = torch.topk(p + c["bias"], k, dim=-1)
        weights = torch.ones_like(idx, dtype=x.dtype)  # 1 + p * u with u = 0
        out = self.mlp(x, c["shared"]) if c["shared"] is not None else torch.zeros_like(x)
        for e, w in enumerate(c["experts"]):
            token, slot = torch.where(idx == e)
            if token.numel() == 0:
                continue
            y = self.mlp(x[token], w) * weights[token, slot, None]
            out.index_add_(0, token, y)
        return out, idx


def time_batch(torch, layers, args, rows):
    """Per-step times (ms) of the dense FFN and each carved layer at `rows` rows, interleaved
    (the order rotates per step), and the distinct routed experts each carved step touched."""
    runs = [("dense", lambda x: (layers.dense_ffn(x), None))] + [
        (c["shape"]["name"], lambda x, c=c: layers.reference_moe(c, x)) for c in layers.carved]
    times = {name: [] for name, _ in runs}
    touched = {c["shape"]["name"]: [] for c in layers.carved}
    root3 = math.sqrt(3.0)
    for step in range(args.warmup + args.reps):
        x = (torch.rand(rows, args.dim, device=layers.dev, generator=layers.gen) * 2 - 1) * root3
        x = x.to(torch.bfloat16)  # unit variance, fresh every step
        for i in range(len(runs)):
            name, fn = runs[(i + step) % len(runs)]
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.synchronize()
            start.record()
            _, idx = fn(x)
            end.record()
            torch.cuda.synchronize()
            if step < args.warmup:
                continue
            times[name].append(start.elapsed_time(end))
            if idx is not None:
                touched[name].append(idx.unique().numel())
    return times, touched


def result(ms_list, weight_bytes):
    ms = statistics.median(ms_list)
    return {"ms": ms, "min_ms": min(ms_list), "weight_bytes": weight_bytes,
            "gbps": weight_bytes / (ms / 1e3) / 1e9}


def main(argv):
    args = parse_args(argv)
    torch = import_torch(args.device)
    layers = Layers(torch, args)
    dense_bytes = 2 * sum(w.numel() for w in layers.dense)
    out = {"tool": "moe_reference.py", "device": torch.cuda.get_device_name(layers.dev),
           "torch": torch.__version__, "dim": args.dim, "ffn": args.ffn, "weight_dtype": "bf16",
           "activation_dtype": "bf16", "routing": args.routing,
           "skew": args.skew if args.routing == "skewed" else 0.0, "reps": args.reps,
           "warmup": args.warmup, "seed": args.seed, "batches": args.batches,
           "dense": {"weight_bytes": dense_bytes, "results": {}}, "configs": {}}
    for c in layers.carved:
        s = c["shape"]
        out["configs"][s["name"]] = {k: s[k] for k in ("shared", "activated", "experts", "routed",
                                                       "shared_width")}
        out["configs"][s["name"]]["expert_width"] = max(s["widths"])
        out["configs"][s["name"]]["results"] = {}
    print(f"moe_reference.py: {out['device']}, torch {torch.__version__}, d {args.dim}, "
          f"d_h {args.ffn}, bf16, routing {args.routing}, median of {args.reps} steps")
    print(f"{'config':<9} {'batch':>6} {'dense_ms':>10} {'loop_ms':>10} {'d/c':>8} {'touched':>8}")
    for rows in args.batches:
        times, touched = time_batch(torch, layers, args, rows)
        dense = result(times["dense"], dense_bytes)
        out["dense"]["results"][str(rows)] = dense
        if not layers.carved:
            print(f"{'dense':<9} {rows:>6} {dense['ms']:>10.4f}")
        for c in layers.carved:
            s = c["shape"]
            ms = statistics.median(times[s["name"]])
            t = statistics.mean(touched[s["name"]])
            out["configs"][s["name"]]["results"][str(rows)] = {
                "ms": ms, "min_ms": min(times[s["name"]]), "dense_ms": dense["ms"],
                "ratio_dense_over_carved": dense["ms"] / ms, "touched_experts": t,
                "touched_fraction": t / s["routed"]}
            print(f"{s['name']:<9} {rows:>6} {dense['ms']:>10.4f} {ms:>10.4f} "
                  f"{dense['ms'] / ms:>7.2f}x {t / s['routed']:>8.3f}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(out, f, indent=2)
            f.write("\n")


if __name__ == "__main__":
    main(sys.argv[1:])
