"""Writes large generated instruction datasets for measuring ember's streaming data pipeline:
a JSONL file with N examples and a multi-file `save_to_disk` Arrow directory.

    tests/fixtures/.venv/bin/python bench/make_big_dataset.py /tmp/big --examples 1000000 --arrow-examples 200000 --shards 8
"""
import argparse
import json
import os
import random

WORDS = ["模型", "数据", "训练", "今天", "天气", "学习", "语言", "the", "model", "data", "learns", "quickly", "中文", "问题", "回答"]


def sentence(rng, n):
    return "".join(rng.choice(WORDS) + (" " if rng.random() < 0.3 else "") for _ in range(n)).strip()


def examples(n, seed):
    rng = random.Random(seed)
    for _ in range(n):
        yield {
            "instruction": sentence(rng, rng.randint(3, 12)),
            "input": sentence(rng, rng.randint(0, 8)) if rng.random() < 0.5 else "",
            "output": sentence(rng, rng.randint(5, 60)),
        }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--examples", type=int, default=1_000_000)
    p.add_argument("--arrow-examples", type=int, default=200_000)
    p.add_argument("--shards", type=int, default=8)
    args = p.parse_args()
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "big.jsonl"), "w", encoding="utf-8") as f:
        for e in examples(args.examples, 0):
            f.write(json.dumps(e, ensure_ascii=False) + "\n")
    if args.arrow_examples:
        from datasets import Dataset

        ds = Dataset.from_generator(lambda: examples(args.arrow_examples, 1))
        ds.save_to_disk(os.path.join(args.out, "big-arrow"), num_shards=args.shards)
    print(f"wrote {args.out}/big.jsonl ({args.examples} examples) and big-arrow ({args.arrow_examples} in {args.shards} shards)")


if __name__ == "__main__":
    main()
