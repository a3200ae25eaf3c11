#!/usr/bin/env python3
"""Reads the detail folder scripts/gpu-check.sh wrote and prints its summary: test pass/fail
counts, compute-sanitizer error counts, cmoe-moe-bench ratios (carved vs dense per batch) and
ours vs the PyTorch per-expert loop (scripts/moe_reference.py), and the GPU targets of
docs/performance.md. For a --e2e check (env/machine.txt says "mode: e2e"): the tests, the
synth/carve steps, cmoe-bench decode per batch (dense vs carved, the share of the measured
bandwidth) and prefill, and the end-to-end GPU targets.

  python3 scripts/gpu_check_summary.py DETAIL_DIR [SUMMARY_JSON]

Exit status 1 when something failed (a test, a sanitizer error, a crash or timeout of a step
that had to run), else 0. Standard library only.
"""
import csv
import json
import os
import re
import sys

# HBM bandwidth by GPU name (vendor datasheets), for the "dense decode >= 75 %" target.
PEAK_GBPS = [("H200", 4800.0), ("H100 PCIe", 2000.0), ("H100", 3350.0),
             ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0)]


def read_text(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def read_json(path):
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def read_steps(detail):
    with open(os.path.join(detail, "steps.tsv"), encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def gpu_line(detail):
    text = read_text(os.path.join(detail, "env", "gpu.csv"))
    machine = read_text(os.path.join(detail, "env", "machine.txt")) or ""
    if "have_gpu: 1" not in machine:
        return None, "no GPU (nvidia-smi found none): GPU steps skipped, tests ran and skipped"
    lines = [l for l in (text or "").splitlines() if l.strip()]
    return (lines[1].split(",")[0].strip(), lines[1]) if len(lines) > 1 else ("?", "GPU: ?")


def test_results(detail, steps, failures):
    """Per test binary: counts from its gtest JSON, or the reason it has none."""
    rows, total = [], {"binaries": 0, "tests": 0, "passed": 0, "failed": 0, "skipped": 0}
    for s in (s for s in steps if s["phase"] == "tests"):
        total["binaries"] += 1
        name = s["step"]
        data = read_json(os.path.join(detail, "tests", name + ".json"))
        if s["exit"] == "skipped" or data is None:
            why = "not run (time budget)" if s["exit"] == "skipped" else f"no JSON, exit {s['exit']}"
            rows.append(f"  {name:<36} {why}")
            failures.append(f"{name}: {why}")
            continue
        cases = [c for suite in data.get("testsuites", []) for c in suite.get("testsuite", [])]
        failed = sum(1 for c in cases if c.get("failures"))
        skipped = sum(1 for c in cases if c.get("result") == "SKIPPED" and not c.get("failures"))
        passed = len(cases) - failed - skipped
        for k, v in (("tests", len(cases)), ("passed", passed), ("failed", failed),
                     ("skipped", skipped)):
            total[k] += v
        if failed or s["exit"] != "0":
            failures.append(f"{name}: {failed} failed, exit {s['exit']}")
        rows.append(f"  {name:<36} {len(cases):>4} tests {passed:>4} passed {failed:>3} failed "
                    f"{skipped:>4} skipped  (exit {s['exit']}, {s['seconds']} s)")
    head = (f"Tests: {total['binaries']} binaries, {total['tests']} tests: {total['passed']} "
            f"passed, {total['failed']} failed, {total['skipped']} skipped")
    return [head] + rows, total


def sanitizer_results(detail, steps, failures, notes):
    rows, errors = [], {"memcheck": 0, "racecheck": 0}
    for s in (s for s in steps if s["phase"] in ("memcheck", "racecheck")):
        tool, name = s["phase"], s["step"]
        if s["exit"] == "skipped":
            rows.append(f"  {tool:<9} {name:<36} skipped ({'no compute-sanitizer' if s['log'] == '-' else 'time budget'})")
            notes.append(f"{tool} {name}: skipped")
            continue
        text = read_text(os.path.join(detail, s["log"])) or ""
        m = re.search(r"ERROR SUMMARY: (\d+) error", text)
        hazards = re.search(r"RACECHECK SUMMARY: (\d+) hazard", text)
        if m is None:
            how = "timed out" if s["exit"] in ("124", "137") else f"exit {s['exit']}"
            rows.append(f"  {tool:<9} {name:<36} no summary ({how})")
            failures.append(f"{tool} {name}: no summary ({how})")
            continue
        n = int(m.group(1))
        errors[tool] += n
        extra = f", {hazards.group(1)} hazards" if hazards else ""
        rows.append(f"  {tool:<9} {name:<36} {n} errors{extra} (exit {s['exit']}, {s['seconds']} s)")
        if n or s["exit"] not in ("0",):
            failures.append(f"{tool} {name}: {n} errors, exit {s['exit']}")
    head = f"Sanitizers: memcheck {errors['memcheck']} errors, racecheck {errors['racecheck']} errors"
    return [head] + (rows or ["  (not run: no GPU)"]), errors


def bench_tables(ours, ref, routing):
    """Carved vs dense per batch from cmoe-moe-bench, and ours vs the reference loop."""
    lines = []
    cpu = ours.get("device", "").startswith("cpu")
    lines.append(f"Bench, routing {routing}: cmoe-moe-bench {ours['backend']} (--device "
                 f"{ours['device']}), d {ours['dim']}, d_h {ours['ffn']}, median of "
                 f"{ours['reps']} steps" + ("  [CPU smoke run, not a measurement]" if cpu else ""))
    configs = list(ours.get("configs", {}))
    head = f"  {'batch':>6} {'dense ms':>9} {'GB/s':>7}"
    for c in configs:
        head += f" | {c + ' ms':>12} {'d/c':>6} {'touched':>7} {'expect':>6}"
    lines.append(head)
    for b in (str(x) for x in ours["batches"]):
        d = ours["dense"]["results"][b]
        row = f"  {b:>6} {d['ms']:>9.4f} {d['gbps']:>7.1f}"
        for c in configs:
            r = ours["configs"][c]["results"][b]
            row += (f" | {r['ms']:>12.4f} {r['ratio_dense_over_carved']:>5.2f}x "
                    f"{r['touched_fraction']:>7.3f} {r['touched_fraction_expected']:>6.3f}")
        lines.append(row)
    if ref is None:
        lines.append("  reference (PyTorch per-expert loop): no results")
        return lines
    lines.append(f"  vs the PyTorch per-expert loop ({ref.get('device')}, torch {ref.get('torch')}),"
                 " ours/ref = reference ms / our ms:")
    head = f"  {'batch':>6} {'ref dense':>9} {'ours/ref':>8}"
    for c in configs:
        head += f" | {'ref ' + c:>13} {'ours/ref':>8}"
    lines.append(head)
    for b in (str(x) for x in ours["batches"]):
        rd = ref.get("dense", {}).get("results", {}).get(b)
        row = (f"  {b:>6} {rd['ms']:>9.4f} {rd['ms'] / ours['dense']['results'][b]['ms']:>7.2f}x"
               if rd else f"  {b:>6} {'-':>9} {'-':>8}")
        for c in configs:
            rr = ref.get("configs", {}).get(c, {}).get("results", {}).get(b)
            mine = ours["configs"][c]["results"][b]["ms"]
            row += (f" | {rr['ms']:>13.4f} {rr['ms'] / mine:>7.2f}x" if rr
                    else f" | {'-':>13} {'-':>8}")
        lines.append(row)
    return lines


def targets(ours, ref, gpu_name):
    """The GPU rows of docs/performance.md's targets that this run measured (uniform routing)."""
    out = []

    def check(what, value, goal, ok):
        out.append(f"  {'MET ' if ok else 'MISS'} {what}: {value} (target {goal})")

    res = ours.get("configs", {})
    if "S2A2E16" in res and "1" in res["S2A2E16"]["results"]:
        r = res["S2A2E16"]["results"]["1"]["ratio_dense_over_carved"]
        check("S2A2E16 vs dense, batch 1", f"{r:.2f}x", ">= 1.7x", r >= 1.7)
    if "S2A2E16" in res and "2048" in res["S2A2E16"]["results"]:
        r = res["S2A2E16"]["results"]["2048"]["ratio_dense_over_carved"]
        check("S2A2E16 vs dense, 2048 tokens", f"{r:.2f}x", ">= 1.6x", r >= 1.6)
    for c, data in res.items():
        mid = {b: v["ratio_dense_over_carved"] for b, v in data["results"].items()
               if 16 <= int(b) <= 256}
        if mid:
            worst = min(mid, key=mid.get)
            check(f"{c} vs dense, batches 16-256 (worst: {worst})", f"{mid[worst]:.2f}x",
                  ">= 0.95x", mid[worst] >= 0.95)
        if ref and c in ref.get("configs", {}):
            ratios = {b: v["ms"] / data["results"][b]["ms"]
                      for b, v in ref["configs"][c]["results"].items() if b in data["results"]}
            if ratios:
                worst = min(ratios, key=ratios.get)
                check(f"{c} ours vs PyTorch loop (worst batch {worst})", f"{ratios[worst]:.2f}x",
                      ">= 3x", ratios[worst] >= 3.0)
    peak = next((g for n, g in PEAK_GBPS if gpu_name and n in gpu_name), None)
    dense1 = ours.get("dense", {}).get("results", {}).get("1")
    if dense1 and peak:
        frac = dense1["gbps"] / peak
        check(f"dense batch 1 bandwidth ({dense1['gbps']:.0f} GB/s of {peak:.0f})",
              f"{100 * frac:.0f} %", ">= 75 %", frac >= 0.75)
    return out


def bench_section(detail, steps, have_gpu, failures, summary):
    lines = []
    for s in (s for s in steps if s["phase"] in ("bench", "reference")):
        expected_failure = s["step"].endswith("cuda-no-gpu")
        if expected_failure:
            text = read_text(os.path.join(detail, s["log"])) or ""
            ok = s["exit"] not in ("0", "124", "137") and "cuda" in text
            lines.append(f"  {s['step']}: exit {s['exit']} "
                         + ("(expected: the factory's error)" if ok else "(UNEXPECTED)"))
            if not ok:
                failures.append(f"{s['step']}: exit {s['exit']} without the device error")
            lines.append("    " + text.strip().splitlines()[-1] if text.strip() else "")
        elif s["exit"] != "0":
            failures.append(f"{s['step']}: exit {s['exit']} (log detail/{s['log']})")
            tail = (read_text(os.path.join(detail, s["log"])) or "").strip().splitlines()[-3:]
            lines.append(f"  {s['step']}: FAILED, exit {s['exit']}: " + " / ".join(tail))
    # uniform_tensor_core: CMOE_CUDA_GROUPED_GEMM=tensor-core, GPU runs only, no reference.
    for routing in ("uniform", "skewed", "uniform_tensor_core"):
        ours = read_json(os.path.join(detail, "bench", f"moe_{routing}.json"))
        ref = read_json(os.path.join(detail, "bench", f"ref_{routing}.json"))
        if ours is None:
            if routing != "uniform_tensor_core" or have_gpu:
                lines.append(f"Bench, routing {routing}: no cmoe-moe-bench results")
            continue
        summary["bench"][routing] = {"ours": ours, "reference": ref}
        lines += bench_tables(ours, ref, routing)
        if routing == "uniform" and have_gpu:
            summary["targets"] = targets(ours, ref, summary.get("gpu"))
            lines += ["Targets (docs/performance.md, GPU rows, uniform routing):"]
            lines += summary["targets"]
    return lines


# ---------------------------------------------------------------------------------------------
# --e2e

def model_label(entry):
    """'dense' or the carved configuration ('S2A2E16') of one cmoe-bench model entry."""
    return entry.get("cmoe") or "dense"


def read_decode(path):
    """cmoe-bench decode --json lines -> {batch: {label: entry}} plus the run's common fields."""
    runs, common = {}, {}
    for line in (read_text(path) or "").splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if not isinstance(j, dict) or j.get("mode") != "decode":
            continue
        entries = j.get("models") or [j]
        runs[int(j["batch"])] = {model_label(m): m for m in entries}
        for k in ("backend", "read_bandwidth_gbps", "bandwidth_kind", "bandwidth_note", "steps",
                  "threads"):
            if k in j:
                common.setdefault(k, j[k])
    return runs, common


def read_prefill(path):
    j = read_json(path)
    if not isinstance(j, dict) or j.get("mode") != "prefill":
        return None, {}
    return {model_label(m): m for m in (j.get("models") or [j])}, j


def read_expert_parallel(path):
    """cmoe-bench decode --expert-parallel --json lines -> {batch: [entries]} (one backend first,
    then each group in --expert-parallel order)."""
    runs = {}
    for line in (read_text(path) or "").splitlines():
        try:
            j = json.loads(line)
        except ValueError:
            continue
        if isinstance(j, dict) and j.get("mode") == "decode" and j.get("models"):
            runs[int(j["batch"])] = j["models"]
    return runs


def expert_parallel_lines(path, smoke, summary):
    """What expert parallelism costs per carved layer against the same model on one backend."""
    runs = read_expert_parallel(path)
    summary["e2e"]["expert_parallel"] = {str(b): r for b, r in runs.items()}
    if not runs:
        return []
    lines = ["Expert parallelism, S2A2E16 decode on one backend vs over groups (a world of one "
             "is the exchanges' own cost: NCCL to itself, host round trips)" + smoke]
    for b in sorted(runs):
        base, groups = runs[b][0], runs[b][1:]
        parts = [f"one backend {base['median_tokens_per_second']:.1f} tok/s"]
        for g in groups:
            delta = g.get("step_delta_us_per_carved_layer")
            parts.append(f"x{g.get('ranks')} {g['median_tokens_per_second']:.1f} tok/s "
                         f"({g.get('speedup', 0):.2f}x"
                         + (f", {delta:+.1f} us per carved layer" if delta is not None else "")
                         + ")")
        lines.append(f"  batch {b}: " + "; ".join(parts))
    return lines


def e2e_steps(detail, steps, failures):
    lines = ["E2E steps:"]
    for s in (s for s in steps
              if s["phase"] in ("synth", "carve", "decode", "prefill", "expert-parallel")):
        text = read_text(os.path.join(detail, s["log"])) or ""
        extra = ""
        if s["step"].startswith("cmoe-carve-"):
            carve = read_json(os.path.join(detail, "e2e", "carve_" + s["step"][len("cmoe-carve-"):]
                                           + ".json"))
            if carve:
                extra = (f" ({carve.get('calib_tokens')} calibration tokens, "
                         f"{100 * carve.get('activation_ratio', 0):.1f} % of the FFN active)")
        if s["step"].endswith("cuda-no-gpu"):
            ok = s["exit"] not in ("0", "124", "137", "skipped") and "cuda" in text
            last = text.strip().splitlines()[-1] if text.strip() else ""
            lines.append(f"  {s['step']:<32} exit {s['exit']} "
                         + ("(expected: the device error)" if ok else "(UNEXPECTED)")
                         + (f": {last}" if last else ""))
            if not ok:
                failures.append(f"{s['step']}: exit {s['exit']} without the device error")
            continue
        how = {"124": "TIMED OUT", "137": "KILLED (timeout or memory)",
               "skipped": "skipped (time budget)"}.get(s["exit"], f"exit {s['exit']}")
        lines.append(f"  {s['step']:<32} {how} in {s['seconds']} s{extra}")
        if s["exit"] != "0":
            failures.append(f"{s['step']}: {how} (log detail/{s['log']})")
            tail = [l for l in text.strip().splitlines() if l.strip()][-2:]
            lines += [f"      {l[:160]}" for l in tail]
    return lines


def e2e_section(detail, steps, gpu_name, failures, notes, summary):
    have_gpu = gpu_name is not None
    e = os.path.join(detail, "e2e")
    lines = []
    plan = (read_text(os.path.join(e, "plan.txt")) or "").strip().splitlines()
    lines.append("E2E plan: " + ("; ".join(plan) if plan else "none (see detail/check.log)"))
    for p in plan:
        if p.startswith("skipped:"):
            notes.append(p)
    lines += e2e_steps(detail, steps, failures)
    smoke = "" if have_gpu else "  [CPU smoke run, not a measurement]"
    runs, common = read_decode(os.path.join(e, "decode.jsonl"))
    prefill, pj = read_prefill(os.path.join(e, "prefill.json"))
    summary["e2e"] = {"decode": {str(b): r for b, r in runs.items()}, "decode_common": common,
                      "prefill": prefill}
    decode_ran = any(s["phase"] == "decode" and not s["step"].endswith("cuda-no-gpu")
                     for s in steps)
    if not runs:
        lines.append("Decode: no results")
        if decode_ran:
            failures.append("decode: no results")
    else:
        labels = list(next(iter(runs.values())).keys())
        kind = common.get("bandwidth_kind", "?")
        what = ("device-to-device copy bandwidth, bytes read + written" if kind == "device_copy"
                else "host read bandwidth")
        lines.append(f"Decode: cmoe-bench on {common.get('backend', '?')}, {common.get('steps')} "
                     f"timed steps per batch; 'bw': the {what}, measured in the same run (median "
                     f"of the samples between rounds of steps){smoke}")
        if kind == "device_copy":
            lines.append("  (% bw = weight bytes read per second over that copy bandwidth: decode "
                         "only reads, so this is conservative)")
        head = (f"  {'batch':>6} {'bw GB/s':>8} {'dense tok/s':>11} {'step ms':>8} {'GB/s':>7} "
                f"{'% bw':>5}")
        for c in labels[1:]:
            head += f" | {c + ' tok/s':>14} {'speedup':>7} {'touched':>7}"
        lines.append(head)
        for b in sorted(runs):
            r = runs[b]
            d = r.get("dense")
            any_model = next(iter(r.values()))
            row = f"  {b:>6} {any_model.get('read_bandwidth_gbps', 0):>8.1f}"
            row += (f" {d['median_tokens_per_second']:>11.1f} {d['median_step_ms']:>8.3f} "
                    f"{d['achieved_gbps']:>7.1f} {100 * d['bandwidth_ratio']:>4.0f}%"
                    if d else f" {'-':>11} {'-':>8} {'-':>7} {'-':>5}")
            for c in labels[1:]:
                m = r.get(c)
                row += (f" | {m['median_tokens_per_second']:>14.1f} {m['speedup']:>6.2f}x "
                        f"{m.get('experts_touched_per_layer', 0):>4.1f}/{m.get('routed_experts', 0):<2}"
                        if m else f" | {'-':>14} {'-':>7} {'-':>7}")
            lines.append(row)
    eager, _ = read_decode(os.path.join(e, "decode_no_graphs.jsonl"))
    graph_rows = []
    for b in sorted(eager):
        on, off = runs.get(b, {}).get("dense"), eager[b].get("dense")
        if on and off and off["median_tokens_per_second"] > 0:
            ratio = on["median_tokens_per_second"] / off["median_tokens_per_second"]
            graph_rows.append(f"batch {b}: {on['median_tokens_per_second']:.1f} vs "
                              f"{off['median_tokens_per_second']:.1f} tok/s ({ratio:.2f}x)")
    summary["e2e"]["decode_no_graphs"] = {str(b): r for b, r in eager.items()}
    if graph_rows:
        lines.append("CUDA graphs, dense decode with vs without (CMOE_CUDA_GRAPHS=off, a second "
                     "run): " + "; ".join(graph_rows))
    if prefill is None:
        lines.append("Prefill: no results")
        if any(s["phase"] == "prefill" for s in steps):
            failures.append("prefill: no results")
    else:
        parts = []
        for c, m in prefill.items():
            parts.append(f"{c} {m['median_seconds'] * 1e3:.1f} ms ({m['tokens_per_second']:.0f} "
                         f"tok/s, {m['gflops'] / 1e3:.1f} TFLOP/s, {m.get('speedup', 1.0):.2f}x)")
        lines.append(f"Prefill {pj.get('tokens')} tokens on {pj.get('backend', '?')}: "
                     + "; ".join(parts) + smoke)
        f32, _ = read_prefill(os.path.join(e, "prefill_cuda_core.json"))
        if f32 and "dense" in f32 and "dense" in prefill:
            tc, cc = prefill["dense"]["median_seconds"], f32["dense"]["median_seconds"]
            lines.append(f"Prefill attention, dense: {tc * 1e3:.1f} ms with the tensor-core tiles "
                         f"vs {cc * 1e3:.1f} ms on the f32 kernel (CMOE_CUDA_PREFILL_ATTENTION="
                         f"cuda-core, a second run): {cc / tc:.2f}x")
            summary["e2e"]["prefill_cuda_core_attention"] = f32
        f32_ffn, _ = read_prefill(os.path.join(e, "prefill_f32_ffn.json"))
        ffn_parts = []
        for c, m in (f32_ffn or {}).items():
            if c in prefill:
                bf, f = prefill[c]["median_seconds"], m["median_seconds"]
                ffn_parts.append(f"{c} {bf * 1e3:.1f} vs {f * 1e3:.1f} ms ({f / bf:.2f}x)")
        if ffn_parts:
            lines.append("Prefill FFN intermediates BF16 vs f32 (CMOE_CUDA_FFN_ACTIVATIONS=f32, a "
                         "second run): " + "; ".join(ffn_parts))
            summary["e2e"]["prefill_f32_ffn"] = f32_ffn
    lines += expert_parallel_lines(os.path.join(e, "expert_parallel.jsonl"), smoke, summary)
    if have_gpu:
        summary["targets"] = e2e_targets(runs, common, prefill, pj, gpu_name)
        lines.append("Targets (docs/performance.md, GPU rows, end to end):")
        lines += summary["targets"] or ["  none measured"]
    return lines


def e2e_targets(runs, common, prefill, pj, gpu_name):
    out = []

    def check(what, value, goal, ok):
        out.append(f"  {'MET ' if ok else 'MISS'} {what}: {value} (target {goal})")

    one = runs.get(1, {})
    if "S2A2E16" in one:
        r = one["S2A2E16"]["speedup"]
        check("S2A2E16 vs dense, decode batch 1", f"{r:.2f}x", ">= 1.7x", r >= 1.7)
    worst = None
    for b, r in runs.items():
        for c, m in r.items():
            if c != "dense" and (worst is None or m["speedup"] < worst[2]):
                worst = (c, b, m["speedup"])
    if worst:
        check(f"carved vs dense, every decode batch {sorted(runs)} (worst: {worst[0]} at batch "
              f"{worst[1]})", f"{worst[2]:.2f}x", ">= 0.95x", worst[2] >= 0.95)
    dense1 = one.get("dense")
    if dense1:
        frac = dense1["bandwidth_ratio"]
        peak = next((g for n, g in PEAK_GBPS if gpu_name and n in gpu_name), None)
        sheet = (f"; {100 * dense1['achieved_gbps'] / peak:.0f} % of the datasheet {peak:.0f} GB/s"
                 if peak else "")
        check(f"dense decode batch 1 ({dense1['achieved_gbps']:.0f} GB/s of weights read over the "
              f"{dense1.get('bandwidth_kind', '?')} bandwidth {dense1['read_bandwidth_gbps']:.0f} "
              f"GB/s measured in the run{sheet})", f"{100 * frac:.0f} %",
              ">= 75 % of HBM bandwidth", frac >= 0.75)
    if prefill and "S2A2E16" in prefill:
        r = prefill["S2A2E16"]["speedup"]
        check(f"S2A2E16 vs dense, prefill {pj.get('tokens')} tokens", f"{r:.2f}x", ">= 1.6x",
              r >= 1.6)
    return out


def missing_libraries(detail):
    """'binary: libfoo.so.1' for each library ldd could not find on this machine."""
    binary, missing = "?", []
    for line in (read_text(os.path.join(detail, "env", "ldd.txt")) or "").splitlines():
        if line.startswith("== "):
            binary = os.path.basename(line[3:].strip())
        elif "not found" in line:
            missing.append(f"{binary}: {line.split()[0]}")
    return missing


def main(argv):
    if len(argv) < 2:
        sys.exit("usage: gpu_check_summary.py DETAIL_DIR [SUMMARY_JSON]")
    detail = argv[1]
    steps = read_steps(detail)
    failures, notes = [], []
    gpu_name, gpu = gpu_line(detail)
    manifest = read_text(os.path.join(detail, "env", "MANIFEST")) or ""
    rev = re.search(r"git_revision: (\S+)", manifest)
    dirty = re.search(r"git_uncommitted_paths: (\d+)", manifest)
    summary = {"gpu": gpu_name, "bench": {}, "targets": []}
    elapsed = read_text(os.path.join(detail, "env", "elapsed.txt"))
    machine = read_text(os.path.join(detail, "env", "machine.txt")) or ""
    e2e = "mode: e2e" in machine
    summary["mode"] = "e2e" if e2e else "kernels"
    lines = [f"cmoe GPU check{' (e2e)' if e2e else ''}: bundle {rev.group(1)[:12] if rev else '?'}"
             + (f" ({dirty.group(1)} uncommitted paths)" if dirty and dirty.group(1) != "0"
                else "") + (f", {elapsed.strip()} s" if elapsed else ""),
             f"GPU: {gpu}"]
    not_built = re.search(r"not_built: (.+)", manifest)
    if not_built and not_built.group(1).strip() != "none":
        lines.append(f"NOT IN THE BUNDLE (did not build): {not_built.group(1).strip()}")
        notes.append(f"not built: {not_built.group(1).strip()}")
    missing = missing_libraries(detail)
    if missing:
        lines.append("MISSING LIBRARIES: " + "; ".join(missing))
        failures.extend(f"missing library: {m}" for m in missing)
    test_lines, summary["tests"] = test_results(detail, steps, failures)
    san_lines = []
    if not e2e:
        san_lines, summary["sanitizer_errors"] = sanitizer_results(detail, steps, failures, notes)
    if gpu_name and summary["tests"]["skipped"]:
        notes.append(f"{summary['tests']['skipped']} tests skipped on a GPU machine")
        test_lines.append(f"  NOTE: {summary['tests']['skipped']} tests skipped although a GPU is "
                          "present (multi-GPU tests skip on one GPU; otherwise see "
                          "detail/tests/*.log: was the device usable?)")
    lines += test_lines + san_lines
    if e2e:
        lines += e2e_section(detail, steps, gpu_name, failures, notes, summary)
    else:
        lines += bench_section(detail, steps, gpu_name is not None, failures, summary)
    status = "FAIL" if failures else ("PASS" if gpu_name else "PASS (no GPU: GPU steps skipped)")
    lines.append(f"OVERALL: {status}")
    lines += [f"  - {f}" for f in failures]
    summary.update(status=status, failures=failures, notes=notes)
    print("\n".join(lines))
    if len(argv) > 2:
        with open(argv[2], "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=1)
            f.write("\n")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
