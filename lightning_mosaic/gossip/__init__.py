"""Gossip core: fragmentation, per-round graphs, mixing and consensus metrics. Pure tensor code, no Lightning."""

from lightning_mosaic.gossip import fused
from lightning_mosaic.gossip.fragmentation import FRAGMENTATIONS, Fragmentation, make_fragmentation
from lightning_mosaic.gossip.metrics import bytes_sent_per_node, consensus_distance, values_sent_per_node
from lightning_mosaic.gossip.mixing import (
    BACKENDS,
    KERNELS,
    default_backend,
    default_kernel,
    mix,
    mix_,
    mix_received_,
    workspace_size,
)
from lightning_mosaic.gossip.protocol import FragmentGossip, RoundGraphs, derive_seed, nonfinite_nodes
from lightning_mosaic.gossip.topology import (
    TOPOLOGIES,
    dense_draw,
    el_local_adjacency,
    el_local_receivers,
    el_oracle_adjacency,
    mixing_matrices,
    mixing_matrices_from_adjacency,
    random_regular_graph,
    random_regular_neighbours,
    receivers_to_adjacency,
    sample_adjacency,
    sample_receivers,
    validate_topology,
)

__all__ = [
    "FRAGMENTATIONS",
    "BACKENDS",
    "KERNELS",
    "TOPOLOGIES",
    "FragmentGossip",
    "Fragmentation",
    "RoundGraphs",
    "bytes_sent_per_node",
    "consensus_distance",
    "default_backend",
    "default_kernel",
    "dense_draw",
    "fused",
    "derive_seed",
    "el_local_adjacency",
    "el_local_receivers",
    "el_oracle_adjacency",
    "make_fragmentation",
    "mix",
    "mix_",
    "mix_received_",
    "workspace_size",
    "mixing_matrices",
    "mixing_matrices_from_adjacency",
    "nonfinite_nodes",
    "random_regular_graph",
    "random_regular_neighbours",
    "receivers_to_adjacency",
    "sample_adjacency",
    "sample_receivers",
    "validate_topology",
    "values_sent_per_node",
]
