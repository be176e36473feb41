"""Time one compiled training step on the CPU, compiled as the model (which also returns the logits) and as
``harness.sandbox.train.training_loss`` (the loss alone), and check that both give the same loss and gradients.

    python results/bench/loss_only_step.py [--steps 8] [--batch 64]

Returning the logits from the compiled function made AOTAutograd build a zero gradient of the whole logits and add
it into the cross-entropy's, every step. One intra-op thread (as the engine trains on the CPU), inductor, the cd
seed's attention at d=64 with 2 layers and 2 heads, 64-token windows, the full vocabulary (16384). Prints the
median ms per step after two warm-up steps, and the largest difference between the two runs' gradients.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from harness.sandbox.loader import load_attention
from harness.sandbox.train import training_loss
from harness.scaffold import build_model
from harness.trusted.frameworks import FRAMEWORKS

VOCAB, CONTEXT, RUNG = 16384, 64, (64, 2, 2)


def run(loss_only: bool, steps: int, batch: int):
    fw = FRAMEWORKS["cd"]
    cls = load_attention(fw.seed_source(), str(fw.seed_path))
    torch.manual_seed(0)
    model = build_model(cls, RUNG, VOCAB, CONTEXT, 0.0, 0)
    compiled = torch.compile(training_loss(model) if loss_only else model, dynamic=False)
    idx = torch.randint(0, VOCAB, (batch, CONTEXT + 1), generator=torch.Generator().manual_seed(1))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        out = compiled(idx[:, :-1], idx[:, 1:])
        loss = out if loss_only else out[1]
        loss.backward()
        times.append(time.perf_counter() - start)
    return loss.item(), [p.grad.clone() for p in model.parameters()], times[2:]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    both, loss_only = run(False, args.steps, args.batch), run(True, args.steps, args.batch)
    diff = max((a - b).abs().max().item() for a, b in zip(both[1], loss_only[1]))
    print(f"logits and loss returned: {1e3 * statistics.median(both[2]):.0f} ms/step (loss {both[0]:.6f})")
    print(f"loss alone:               {1e3 * statistics.median(loss_only[2]):.0f} ms/step (loss {loss_only[0]:.6f})")
    print(f"largest gradient difference: {diff}")


if __name__ == "__main__":
    main()
