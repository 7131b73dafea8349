"""torchrun worker for test_train: trains, then saves this rank's final weights for comparison."""

import sys
from pathlib import Path

import torch.distributed as dist
from safetensors.torch import save_file

from training.train import parse_args, train

if __name__ == "__main__":
    args = parse_args(sys.argv[1:])
    args.argv = sys.argv[1:]
    model, _ = train(args)
    rank = int(__import__("os").environ["RANK"])
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(Path(args.out) / f"rank{rank}.safetensors"))
    assert not dist.is_initialized()
