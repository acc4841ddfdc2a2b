"""Speed table of every model preset, the text side and batch inference (issue 8).

    python benchmarks/speed.py [--json speed.json] [--wait-idle] [other `vocabseg bench` options]

is `vocabseg bench --all ...`: latency / FLOPs / GFLOP/s / fraction of the measured
fp32 matmul peak / peak memory per preset at its published test resolution (and the
straightforward path for comparison), text encoding of ADE-150 and ADE-847 with the
ViLD templates (uncached and cached), and images/s of `vocabseg segment DIR` at batch
sizes 1 / 4 and under torchrun. The logic lives in vocabseg.engine.bench*.
"""
import sys

from vocabseg.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "--all", *sys.argv[1:]]))
