"""The README's figure of the network experiment (python docs/net_experiment_figure.py)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

base = "outputs/net-experiment"
runs = {
    "fedavg-wait": "FedAvg, wait",
    "fedavg-drop": "FedAvg, drop at 24 s",
    "stc-drop": "STC (p-up 0.01, p-down 0.002), drop",
    "uniform4-drop": "4-bit uplink, drop",
    "progressive-partial": "progressive 2+6, partial",
}
figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
for run, label in runs.items():
    rounds = pd.read_csv(f"{base}/{run}/rounds.csv")
    axes[0].plot(rounds.sim_time_s, rounds.test_accuracy, marker="o", markersize=3, label=label)
    trained = rounds[rounds["round"] > 0]  # round 0 has only the partition-id query
    axes[1].plot(trained.cum_up_bytes / 1e6, trained.test_accuracy, marker="o", markersize=3)
axes[0].set_xlabel("simulated time (s)")
axes[1].set_xlabel("cumulative uplink (MB, log scale)")
axes[1].set_xscale("log")
axes[0].set_ylabel("test accuracy")
axes[0].legend(loc="lower right", fontsize="small")
for axis in axes:
    axis.grid(alpha=0.3)
figure.suptitle(
    "CNN, Fashion-MNIST, 10 clients (Dirichlet 0.5), 5 per round, random-walk uplinks 1-10 Mbit/s"
)
figure.tight_layout()
figure.savefig("docs/net-experiment.png", dpi=110)
