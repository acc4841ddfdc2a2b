"""Peak memory of one fine-tuning iteration on CPU: a global batch trained in one pass or in
``train.accumulate`` micro-batches, with and without ``train.activation_checkpointing``.

Each configuration runs in a fresh process (random weights, synthetic 3-class images); the
figure is the growth of the process's peak resident memory (ru_maxrss) over the model build,
i.e. activations + gradients + optimiser state of one AdamW step.

    .venv/bin/python benchmarks/finetune_memory.py --preset san-vit-b16 --crop 512 --batch 4

``--same-points`` makes the point sampling identical for every image and mask, so the loss column
compares the large batch with its micro-batches (equal to float precision).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time, torch
from vocabseg.registry import get_spec
from vocabseg.vocab import Vocabulary
from vocabseg.engine.training.train import TrainStep, accumulate_gradients
preset, crop, batch, acc, ckpt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
torch.manual_seed(0)
model = get_spec(preset).build().train()
model.set_activation_checkpointing(ckpt)
if sys.argv[6] == "1":     # --same-points: every [..., P, 2] point draw repeats one fixed set of P points
    rand = torch.rand
    def same(*size, device=None, **kw):
        size = tuple(size[0]) if len(size) == 1 and not isinstance(size[0], int) else size
        pts = rand(size[-2:], generator=torch.Generator().manual_seed(size[-2]))
        return pts.expand(size).clone().to(device or "cpu")
    torch.rand = same
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
g = torch.Generator().manual_seed(0)
items = [{"image": torch.randint(0, 255, (3, crop, crop), dtype=torch.uint8, generator=g),
          "sem_seg": torch.randint(0, 3, (crop // 32, crop // 32), generator=g).repeat_interleave(32, 0)
                          .repeat_interleave(32, 1)} for _ in range(batch)]
vocab = Vocabulary.parse("cat; dog; sky")
model.text_encoder()(vocab)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.time()
scaler = torch.amp.GradScaler("cpu", enabled=False)
losses = accumulate_gradients(TrainStep(model), items, vocab, acc, scaler, "cpu", "fp32", 1)
opt.step()
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"accumulate": acc, "checkpointing": ckpt, "peak_mb": (peak - base) / 1024,
                  "seconds": time.time() - t, "loss": float(sum(losses.values()))}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="san-vit-b16")
    ap.add_argument("--crop", type=int, default=512)
    ap.add_argument("--batch", type=int, default=4, help="global batch of the iteration")
    ap.add_argument("--accumulate", type=int, nargs="+", default=[1, 4])
    ap.add_argument("--checkpointing", type=int, nargs="+", default=[0, 1], help="0 and/or 1")
    ap.add_argument("--same-points", action="store_true",
                    help="the matcher's and mask losses' random points identical for every image and mask, so the "
                         "loss of a batch and of its micro-batches are comparable (they draw from the global RNG in "
                         "a different order otherwise)")
    args = ap.parse_args()
    rows = []
    for ckpt in args.checkpointing:
        for acc in args.accumulate:
            out = subprocess.run([sys.executable, "-c", CHILD, args.preset, str(args.crop), str(args.batch), str(acc),
                                  str(ckpt), str(int(args.same_points))], capture_output=True, text=True)
            if out.returncode:
                sys.exit(out.stderr[-2000:])
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(rows[-1], flush=True)
    print(f"\n{args.preset}, crop {args.crop}, global batch {args.batch}, fp32 CPU, one AdamW step\n")
    print("| micro-batch x accumulate | activation checkpointing | peak memory growth (MB) | seconds | loss |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {args.batch // r['accumulate']} x {r['accumulate']} | {'on' if r['checkpointing'] else 'off'} | "
              f"{r['peak_mb']:.0f} | {r['seconds']:.1f} | {r['loss']:.4f} |")


if __name__ == "__main__":
    main()
