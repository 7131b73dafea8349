"""`python -m training.data.prepare --out data`: KJV splits + tokenizer; checks Fashion-MNIST."""

from __future__ import annotations

import argparse

from training.data import fashion, kjv


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="data")
    ap.add_argument("--vocab-size", type=int, default=4096)
    args = ap.parse_args(argv)
    for split in ("train", "test"):
        images, _ = fashion.load_split(split)
        print(f"fashion-mnist {split}: {len(images)} images in {fashion.data_dir()}")
    folder = kjv.prepare(args.out, args.vocab_size)
    print(f"kjv splits and tokenizer.json in {folder}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
