"""Ember against transformers + peft, side by side in one run on this machine's CPU: the benchmark
matrix of issue #19. For each shape, LoRA training (`ember bench train` vs peft_baseline.py) and
greedy generation (`ember bench generate` vs hf_generate.py); prints the results as a table with
the ratios ember/reference, and writes every run as one JSON line to --out.

Called by bench/compare.sh, which finds the ember binary and the Python with torch + peft.

Each run also records what makes a figure trustworthy on a shared virtual machine: the spread of
its timed steps, the CPU time it used, the CPU time the hypervisor gave to other guests while it
ran ("steal", from /proc/stat), and its instruction count where `perf stat` can count (not on
every VM). A step median moves by a few percent between quiet runs; a run with steal above a few
percent, or with CPU time well below 2 x its wall time, was not quiet.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))

# The three shapes of issue #19: small enough that overheads show, and the two real ones.
SHAPES = {
    "small": dict(shape=os.path.join(HERE, "shapes", "small.json"), batch=4, seq=128, prompt=16, new=64),
    "bloom-560m": dict(shape="bloom-560m", batch=4, seq=128, prompt=128, new=32),
    "bloom-1b4": dict(shape="bloom-1b4", batch=1, seq=256, prompt=128, new=32),
}


def cpu_times():
    """(busy, steal) jiffies of the whole machine, from /proc/stat's first line."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return user + nice + system + irq + softirq, steal


def perf_counts():
    """Whether `perf stat` counts instructions here (most VMs say 'not supported')."""
    try:
        out = subprocess.run(["perf", "stat", "-x,", "-e", "instructions:u", "true"], capture_output=True, text=True)
    except FileNotFoundError:
        return False
    return out.returncode == 0 and "not supported" not in out.stderr and "<not" not in out.stderr


def run(name, cmd, cwd, use_perf):
    """Runs one benchmark command; returns its last JSON line with the run's measurements added."""
    print(f"== {name}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    perf_file = tempfile.NamedTemporaryFile(suffix=".perf", delete=False).name
    if use_perf:
        cmd = ["perf", "stat", "-x,", "-e", "instructions:u", "-o", perf_file, "--"] + cmd
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    busy0, steal0 = cpu_times()
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - start
    busy1, steal1 = cpu_times()
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{name} failed with exit code {done.returncode}")
    result = json.loads([line for line in done.stdout.splitlines() if line.startswith("{")][-1])
    result["run"] = name
    result["wall_s"] = wall
    result["cpu_s"] = (after_cpu.ru_utime - before_cpu.ru_utime) + (after_cpu.ru_stime - before_cpu.ru_stime)
    result["steal_pct"] = 100.0 * (steal1 - steal0) / max(1, busy1 - busy0 + steal1 - steal0)
    if use_perf:
        with open(perf_file) as f:
            for line in f:
                parts = line.split(",")
                if len(parts) > 2 and parts[2].startswith("instructions") and parts[0].isdigit():
                    result["instructions"] = int(parts[0])
    os.unlink(perf_file)
    return result


def spread(steps):
    """(max - min) / median of the timed steps, as a percentage."""
    if not steps:
        return float("nan")
    ordered = sorted(steps)
    return 100.0 * (ordered[-1] - ordered[0]) / ordered[len(ordered) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ember", required=True)
    p.add_argument("--python", default=sys.executable)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated: " + ", ".join(SHAPES))
    p.add_argument("--steps", type=int, default=5, help="timed training steps (after one warm-up)")
    p.add_argument("--repeats", type=int, default=3, help="timed generation runs (after one warm-up)")
    p.add_argument("--only", choices=["train", "generate"], help="run one half of the matrix")
    p.add_argument("--ember-args", default="", help="extra arguments for both ember benchmarks")
    p.add_argument("--out", default="compare.jsonl")
    args = p.parse_args()

    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"  # PyTorch's OpenMP threads spin between regions otherwise
    use_perf = perf_counts()
    extra = args.ember_args.split()
    rows = []
    for name in args.shapes.split(","):
        if name not in SHAPES:
            raise SystemExit(f"--shapes: {name} is not one of {', '.join(SHAPES)}")
        s = SHAPES[name]
        shape, batch, seq = s["shape"], str(s["batch"]), str(s["seq"])
        if args.only != "generate":
            steps = ["--steps", str(args.steps), "--warmup", "1"]
            ours = run(f"{name} ember train", [args.ember, "bench", "train", "--shape", shape, "--batch", batch, "--seq", seq,
                                               "--dtype", "f32", "--device", "cpu", "--json"] + steps + extra, HERE, use_perf)
            theirs = run(f"{name} peft train", [args.python, "peft_baseline.py", "--shape", shape, "--batch", batch, "--seq", seq,
                                                "--dtype", "f32", "--json"] + steps, HERE, use_perf)
            rows.append((name, "train", ours, theirs))
        if args.only != "train":
            gen = ["--prompt-len", str(s["prompt"]), "--new-tokens", str(s["new"]), "--repeats", str(args.repeats), "--json"]
            ours = run(f"{name} ember generate", [args.ember, "bench", "generate", "--shape", shape, "--device", "cpu"] + gen + extra,
                       HERE, use_perf)
            theirs = run(f"{name} hf generate", [args.python, "hf_generate.py", "--shape", shape] + gen, HERE, use_perf)
            rows.append((name, "generate", ours, theirs))

    with open(args.out, "w") as f:
        for _, _, ours, theirs in rows:
            f.write(json.dumps(ours) + "\n" + json.dumps(theirs) + "\n")
    print_table(rows, use_perf)
    print(f"\nevery run as JSON: {args.out}")


def print_table(rows, use_perf):
    metrics = {
        "train": [("training tokens/s", "tokens_per_s"), ("peak RSS (MiB)", "peak_rss_mb")],
        "generate": [("prefill tokens/s", "prefill_tokens_per_s"), ("decode tokens/s", "decode_tokens_per_s"),
                     ("peak RSS (MiB)", "peak_rss_mb")],
    }
    print(f"\n| shape | metric | ember | transformers (+ peft) | ember / reference |\n|---|---|---:|---:|---:|")
    for name, kind, ours, theirs in rows:
        for label, key in metrics[kind]:
            a, b = ours[key], theirs[key]
            print(f"| {name} | {label} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    print("\n| run | step median (s) | steps' spread | CPU s / wall s | steal | instructions |\n|---|---:|---:|---:|---:|---:|")
    for _, _, ours, theirs in rows:
        for r in (ours, theirs):
            median = r.get("step_s_median", float("nan"))
            instructions = f"{r['instructions'] / 1e9:.1f} G" if "instructions" in r else "n/a"
            print(f"| {r['run']} | {median:.3f} | {spread(r.get('step_s', [])):.1f}% | "
                  f"{r['cpu_s']:.0f} / {r['wall_s']:.0f} | {r['steal_pct']:.1f}% | {instructions} |")
    if not use_perf:
        print("\n(`perf stat` counts no instructions on this machine; see docs/PERFORMANCE.md for callgrind)")


if __name__ == "__main__":
    main()
