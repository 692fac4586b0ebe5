"""Writes a random-weight BLOOM checkpoint of a named shape (default: bloom-1b4-zh's: hidden 2048,
24 layers, 16 heads, vocab 46145), for measuring `ember bench load` on a realistic size without
downloading anything.

    tests/fixtures/.venv/bin/python bench/make_random_checkpoint.py /tmp/bloom-1b4-random --dtype float16 --format safetensors
"""
import argparse
import os

import torch
from safetensors.torch import save_file
from transformers import BloomForCausalLM

from hf_generate import shape_config


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--shape", default="bloom-1b4", help="a named shape or a config.json path")
    p.add_argument("--dtype", default="float16", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--format", default="safetensors", choices=["safetensors", "bin"])
    args = p.parse_args()

    config = shape_config(args.shape)
    torch.manual_seed(0)
    model = BloomForCausalLM(config).to(getattr(torch, args.dtype))
    os.makedirs(args.out, exist_ok=True)
    config.torch_dtype = args.dtype
    config.save_pretrained(args.out)
    state = {k: v.contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    if args.format == "safetensors":
        save_file(state, os.path.join(args.out, "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, os.path.join(args.out, "pytorch_model.bin"))
    print(f"wrote {args.out} ({sum(v.numel() for v in state.values()):,} parameters, {args.dtype}, {args.format})")


if __name__ == "__main__":
    main()
