"""transformers' prefill and decode speed on a random-weight BLOOM, the baseline for
`ember bench generate` (same shape, prompt length, new tokens, greedy, KV cache, f32, CPU).

    OMP_WAIT_POLICY=PASSIVE tests/fixtures/.venv/bin/python bench/hf_generate.py --shape bloom-560m --json

Prints a table and, with --json, one last JSON line with the same keys as ember's.
"""
import argparse
import json
import os
import resource
import statistics
import time

import torch
from transformers import BloomConfig, BloomForCausalLM

SHAPES = {  # vocab, hidden, layers, heads — as BloomConfig.named_shape in core/src/config.rs
    "tiny": (1024, 64, 2, 4),
    "bloom-560m": (250880, 1024, 24, 16),
    "bloom-1b1": (250880, 1536, 24, 16),
    "bloom-1b4": (46145, 2048, 24, 16),
}


def shape_config(shape):
    """A named shape, or the path of a config.json (as `ember bench --shape` takes)."""
    if shape in SHAPES:
        vocab, hidden, layers, heads = SHAPES[shape]
        return BloomConfig(vocab_size=vocab, hidden_size=hidden, n_layer=layers, n_head=heads)
    if os.path.isfile(shape):
        return BloomConfig.from_json_file(shape)
    raise SystemExit(f"--shape {shape}: not a known shape ({', '.join(SHAPES)}) nor a config.json file")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="bloom-560m", help="a named shape or a config.json path")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(os.cpu_count())
    device = torch.device(args.device)
    config = shape_config(args.shape)
    vocab = config.vocab_size
    torch.manual_seed(0)
    model = BloomForCausalLM(config).eval().to(device)
    prompt = torch.tensor([[4 + (i * 7919) % (vocab - 4) for i in range(args.prompt_len)]], device=device)
    # A GPU runs ahead of Python: the clock stops only once its work is done.
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    prefill_s, step_s = [], []
    with torch.inference_mode():
        for run in range(args.repeats + 1):
            start = time.perf_counter()
            out = model(prompt, use_cache=True)
            logits = out.logits[:, -1]
            sync()
            prefill = time.perf_counter() - start
            cache = getattr(out, "past_key_values", None) or out.cache
            mask = torch.ones(1, args.prompt_len, dtype=torch.long, device=device)
            steps = []
            for _ in range(args.new_tokens):
                start = time.perf_counter()
                next_id = logits.argmax(-1, keepdim=True)
                mask = torch.cat([mask, torch.ones(1, 1, dtype=torch.long, device=device)], dim=1)
                out = model(next_id, attention_mask=mask, past_key_values=cache, use_cache=True)
                cache = getattr(out, "past_key_values", None) or out.cache
                logits = out.logits[:, -1]
                sync()
                steps.append(time.perf_counter() - start)
            if run > 0:
                prefill_s.append(prefill)
                step_s.extend(steps)

    prefill = statistics.median(prefill_s)
    step = statistics.median(step_s)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result = {
        "prefill_tokens_per_s": args.prompt_len / prefill,
        "decode_tokens_per_s": 1 / step,
        "peak_rss_mb": peak_rss_mb,
        "shape": args.shape,
        "prompt_len": args.prompt_len,
        "new_tokens": args.new_tokens,
        "device": torch.cuda.get_device_name() if device.type == "cuda"
        else f"CPU (PyTorch {torch.__version__}, {torch.get_num_threads()} threads)",
    }
    report(
        [("prefill tokens/s", result["prefill_tokens_per_s"], 1),
         ("decode tokens/s", result["decode_tokens_per_s"], 2),
         ("peak RSS (MiB)", peak_rss_mb, 0)],
        result, args.json)


def report(rows, result, as_json):
    """The table ember's benchmarks print, then (with --json) the result as one JSON line."""
    print(f"{'metric':<26} {'value':>12}")
    for name, value, decimals in rows:
        print(f"{name:<26} {value:>12.{decimals}f}")
    if as_json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
