"""transformers + peft LoRA training speed and memory on a random-weight BLOOM, the baseline for
`ember bench train` (same shape, batch, sequence length, dtype, LoRA r=8 on query_key_value,
AdamW, gradient clipping at 1.0 as Trainer does; every token a label).

    OMP_WAIT_POLICY=PASSIVE tests/fixtures/.venv/bin/python bench/peft_baseline.py --shape bloom-560m --batch 4 --seq 128 --json

Uses CUDA when --device cuda is given (and then reports GPU memory too). Prints a table and, with
--json, one last JSON line with the same keys as ember's.
"""
import argparse
import os
import resource
import statistics
import time

import torch
from peft import LoraConfig, get_peft_model
from transformers import BloomForCausalLM

from hf_generate import report, shape_config

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="bloom-560m", help="a named shape or a config.json path")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    torch.set_num_threads(os.cpu_count())
    device = torch.device(args.device)
    config = shape_config(args.shape)
    vocab = config.vocab_size
    torch.manual_seed(0)
    # Base weights stored in --dtype, as `from_pretrained(torch_dtype=...)` does; peft keeps the
    # LoRA weights in f32 (autocast_adapter_dtype) and Trainer's fp16/bf16 autocasts the rest.
    model = BloomForCausalLM(config).to(DTYPES[args.dtype]).to(device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    lora = LoraConfig(task_type="CAUSAL_LM", r=8, lora_alpha=16, lora_dropout=0.05, target_modules=["query_key_value"])
    model = get_peft_model(model, lora)
    model.print_trainable_parameters()
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-5, weight_decay=0.0)

    g = torch.Generator().manual_seed(0)
    step_s = []
    for step in range(args.warmup + args.steps):
        ids = torch.randint(4, vocab, (args.batch, args.seq), generator=g).to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "f32"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        value = loss.item()  # waits for the device, as ember's step does
        seconds = time.perf_counter() - start
        print(f"step {step + 1}: {seconds:.2f} s, loss {value:.4f}", flush=True)
        if step >= args.warmup:
            step_s.append(seconds)

    step = statistics.median(step_s)
    result = {
        "tokens_per_s": args.batch * args.seq / step,
        "step_s_median": step,
        "step_s": step_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "shape": args.shape, "batch": args.batch, "seq": args.seq, "dtype": args.dtype,
        "gradient_checkpointing": args.gradient_checkpointing,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU (PyTorch, {torch.get_num_threads()} threads)",
    }
    if device.type == "cuda":
        result["peak_gpu_mb"] = torch.cuda.max_memory_reserved() / 2**20
    report(
        [("training tokens/s", result["tokens_per_s"], 1), ("step median (s)", step, 3), ("peak RSS (MiB)", result["peak_rss_mb"], 0)],
        result, args.json)


if __name__ == "__main__":
    main()
