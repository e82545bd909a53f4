"""The local development cluster and the tiny model it serves: beside the product, not in it.

``up()`` starts a real multi-node Slurm 22.05 cluster on this machine (one slurmd per UTS
namespace, fake GPUs as gres, slurmdbd for ``sacct``); ``make_tiny_model()`` writes a small MoE
config and trained tokenizer into an offline HF cache for the mock engines and the benchmark
client. The CLI is ``inferx-slurm local-cluster up|down|status``.
"""

from inferx_slurm.localdev.cluster import ClusterInfo, down, kill_node, restart_node, status, up
from inferx_slurm.localdev.layout import ClusterError

__all__ = ["ClusterError", "ClusterInfo", "down", "kill_node", "restart_node", "status", "up"]
