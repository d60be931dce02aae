"""Gossip core: fragmentation, per-round graphs, mixing and consensus metrics. Pure tensor code, no Lightning."""

from lightning_mosaic.gossip.fragmentation import FRAGMENTATIONS, Fragmentation, make_fragmentation
from lightning_mosaic.gossip.metrics import bytes_sent_per_node, consensus_distance, values_sent_per_node
from lightning_mosaic.gossip.mixing import mix, mix_
from lightning_mosaic.gossip.protocol import FragmentGossip, derive_seed, nonfinite_nodes
from lightning_mosaic.gossip.topology import (
    TOPOLOGIES,
    el_local_adjacency,
    el_oracle_adjacency,
    mixing_matrices,
    mixing_matrices_from_adjacency,
    random_regular_graph,
    sample_adjacency,
    validate_topology,
)

__all__ = [
    "FRAGMENTATIONS",
    "TOPOLOGIES",
    "Fragmentation",
    "FragmentGossip",
    "bytes_sent_per_node",
    "consensus_distance",
    "derive_seed",
    "el_local_adjacency",
    "el_oracle_adjacency",
    "make_fragmentation",
    "mix",
    "mix_",
    "mixing_matrices",
    "mixing_matrices_from_adjacency",
    "nonfinite_nodes",
    "random_regular_graph",
    "sample_adjacency",
    "validate_topology",
    "values_sent_per_node",
]
