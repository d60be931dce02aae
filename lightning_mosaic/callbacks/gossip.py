"""``MosaicGossip``: the Lightning callback that runs Mosaic Learning's fragment-wise gossip after local steps."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lightning_mosaic._validation import check_int as _check_int
from lightning_mosaic._validation import check_probability
from lightning_mosaic.callbacks.faults import (
    NO_FAULTS,
    MosaicFaults,
    checkpoint_fault_settings,
    fault_differences,
    faults_configured,
)
from lightning_mosaic.callbacks.target import GossipTarget, as_gossip_target
from lightning_mosaic.distributed.diagnosis import CommunicationError, describe_failure
from lightning_mosaic.distributed.exchange import ShardedMixer
from lightning_mosaic.distributed.sharding import node_bounds
from lightning_mosaic.distributed.strategy import check_multiprocess_module
from lightning_mosaic.gossip.fragmentation import FRAGMENTATIONS
from lightning_mosaic.gossip.graphs import GRAPH_TOPOLOGIES, WEIGHTS, check_topology
from lightning_mosaic.gossip.metrics import bytes_sent_per_node, values_sent_per_node
from lightning_mosaic.gossip.mixing import KERNELS
from lightning_mosaic.gossip.protocol import FragmentGossip, nonfinite_nodes
from lightning_mosaic.metrics import ConsensusDistance

NONFINITE_POLICIES = ("raise", "isolate")

#: The fixed-graph settings of :class:`MosaicGossip` and their defaults.
GRAPH_DEFAULTS: dict[str, Any] = {
    "degree": None,
    "graph": None,
    "shape": None,
    "directed": False,
    "weights": None,
    "allow_disconnected": False,
}


class NonFiniteParametersError(FloatingPointError):
    """Some nodes hold NaN or Inf parameters before a gossip round; raised before anything is sent."""


class GossipCommunicationError(CommunicationError):
    """A multi-process gossip round failed: another rank died, hung past the timeout, or the network failed."""


class MosaicGossip(Callback):
    """Fragment-wise epidemic gossip between the nodes of a :class:`~lightning_mosaic.MosaicModule`.

    Every ``every_n_steps`` optimizer steps (local steps), one gossip round runs on the module's ``(n, d)``
    parameter buffer: the model is split into ``fragments`` fixed fragments, and each fragment is sent to its own
    ``peers`` random peers and averaged with what each node received (Mosaic Learning, arXiv 2602.04352,
    Algorithm 1). ``fragments=1`` is Epidemic Learning (de Vos et al., NeurIPS 2023).

    The round runs in ``on_train_batch_end`` guarded by ``trainer.global_step``, so it happens once per optimizer
    step even with ``accumulate_grad_batches``. The graph generator's state and the round counter are saved in the
    checkpoint under :attr:`state_key` for exact resume.

    What it mixes is the module's gossip target (:class:`~lightning_mosaic.callbacks.target.GossipTarget`):
    a :class:`~lightning_mosaic.MosaicModule`'s ``(n, d)`` rows (all n nodes in one process, or each process's
    block), or, in a multi-process run of any other ``LightningModule``, that process's parameters as one node
    (:class:`~lightning_mosaic.callbacks.target.ModuleParameters`). Override :meth:`should_gossip` to run rounds
    on another schedule.

    Logged after every round (``on_step``): ``gossip/consensus_distance`` (after mixing,
    ``(1/n) sum_i ||x_i - x_bar||^2``, over the nodes that took part), ``gossip/values_sent_per_node``
    (``s * d`` per round) and ``gossip/round``; with churn or isolation also ``gossip/offline_nodes`` and
    ``gossip/isolated_nodes``; in multi-process runs ``gossip/bytes_sent_per_rank``.

    Churn and stragglers are their own callback, :class:`~lightning_mosaic.callbacks.MosaicFaults`: at ``setup`` the
    gossip finds it among ``trainer.callbacks`` (at most one, anywhere in the list) and, with faults configured,
    keeps the nodes it reports offline (:meth:`~lightning_mosaic.callbacks.MosaicFaults.offline`) out of each round,
    as it keeps non-finite nodes out with ``on_nonfinite="isolate"``.
    :attr:`faults` is that callback (``None`` without one).

    Args:
        fragments: K >= 1 (at most d; with ``fragmentation="layer"`` at most the number of parameter tensors).
        topology: ``"el-local"`` (each node picks s random receivers; default), ``"el-oracle"`` (random
            s-regular graph per fragment; needs n * s even), or a fixed graph drawn or read once for the run:
            ``"ring"``, ``"torus"`` (``shape``), ``"regular"`` (``degree``), ``"exponential"`` (node i linked to
            i + 2^k mod n), ``"one-peer-exponential"`` (round t: node i sends to i + 2^(t mod tau) mod n),
            ``"complete"``, ``"file"`` (``graph``). On a fixed graph each fragment goes to ``peers`` neighbours drawn
            per round among the node's neighbours (EL-Local restricted to the graph), or to all of them with
            ``peers="all"`` (D-PSGD with ``fragments=1``): see ``docs/topologies.md``.
        peers: s >= 1 peers per fragment per round (at most n - 1; on a fixed graph at most every node's degree), or
            ``"all"``: every neighbour of a fixed graph.
        fragmentation: ``"random"`` (default), ``"contiguous"`` or ``"layer"``.
        every_n_steps: Local steps per round (>= 1, default 1).
        seed: Seed of the fragmentation and of the graph stream.
        drop_prob: Probability in [0, 1] that each fragment message is lost (message loss, default 0).
        on_nonfinite: What to do when, after local training and before gossip, some nodes hold NaN or Inf
            parameters: ``"raise"`` (default) a :class:`NonFiniteParametersError` naming the nodes and the round,
            before anything is sent; ``"isolate"`` those nodes for the round (they neither send nor receive), log
            ``gossip/isolated_nodes`` and warn. A non-finite value never reaches another node.
        degree: Degree of ``topology="regular"`` (default: ``peers``).
        graph: Edge-list file of ``topology="file"``: one ``u v`` pair of node ids in [0, n) per line, ``#``
            comments; undirected unless ``directed``.
        shape: ``[a, b]`` with a * b = n for ``topology="torus"`` (default: the most square factorization).
        directed: Whether the edges of ``graph`` are directed, ``u -> v`` (u sends to v).
        weights: Weights of a fixed graph used whole: ``"metropolis-hastings"`` (the default, D-PSGD's doubly
            stochastic choice) or ``"uniform"`` (1 / (1 + in-degree)). With sampled peers, EL and one-peer
            exponential topologies every node averages what it received with equal weights; leave it ``None``.
        allow_disconnected: Accept a fixed graph with several connected components, or a directed one with several
            groups of nodes that hear no other group (refused by default, naming how many).
        kernel: How a single process mixes (:class:`~lightning_mosaic.gossip.FragmentGossip`): ``"auto"``
            (default; the index kernel, :func:`~lightning_mosaic.gossip.default_kernel`), ``"index"`` or
            ``"dense"`` (``(K, n, n)`` matrices; CHANGELOG.md says which documented results it reproduces bit for
            bit). The kernels draw the same graphs and agree to float rounding; the setting is not part of
            :attr:`state_key`. Multi-process runs mix with :class:`~lightning_mosaic.distributed.ShardedMixer`
            whatever it says.

    Raises:
        ValueError: At construction for an argument out of range (naming it); at ``setup`` if ``peers``,
            ``topology`` or ``fragments`` do not fit the module's n and d, or ``trainer.callbacks`` holds more than
            one :class:`~lightning_mosaic.callbacks.MosaicFaults`.
        TypeError: At ``setup`` if the module is not a gossip target and the run has one process.
    """

    def __init__(
        self,
        fragments: int = 1,
        peers: int | Literal["all"] = 1,
        topology: str = "el-local",
        fragmentation: str = "random",
        every_n_steps: int = 1,
        seed: int = 0,
        drop_prob: float = 0.0,
        on_nonfinite: str = "raise",
        kernel: str = "auto",
        degree: int | None = None,
        graph: str | None = None,
        shape: tuple[int, int] | None = None,
        directed: bool = False,
        weights: str | None = None,
        allow_disconnected: bool = False,
    ) -> None:
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        _check_int("fragments", fragments, 1)
        if peers != "all":
            _check_int("peers", peers, 1)
        if degree is not None:
            _check_int("degree", degree, 1)
        _check_int("every_n_steps", every_n_steps, 1)
        _check_int("seed", seed, 0)
        check_probability("drop_prob", drop_prob)
        if on_nonfinite not in NONFINITE_POLICIES:
            raise ValueError(f"on_nonfinite must be one of {NONFINITE_POLICIES}, got {on_nonfinite!r}")
        check_topology(topology)
        if peers == "all" and topology not in GRAPH_TOPOLOGIES:
            raise ValueError(
                f"peers='all' (every neighbour) needs a fixed graph topology, one of {GRAPH_TOPOLOGIES}; got "
                f"topology={topology!r}, which draws s random peers: give peers as an integer"
            )
        if weights is not None and weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS} or None, got {weights!r}")
        if topology == "file" and graph is None:
            raise ValueError("topology='file' needs graph=PATH, an edge list (one 'u v' pair of node ids per line)")
        if fragmentation not in FRAGMENTATIONS:
            raise ValueError(f"fragmentation must be one of {FRAGMENTATIONS}, got {fragmentation!r}")
        self.fragments = fragments
        self.peers = peers
        self.topology = topology
        self.fragmentation = fragmentation
        self.every_n_steps = every_n_steps
        self.seed = seed
        self.drop_prob = float(drop_prob)
        self.kernel = kernel
        self.degree = degree
        self.graph = None if graph is None else str(graph)
        self.shape = None if shape is None else (int(shape[0]), int(shape[1]))
        self.directed = bool(directed)
        self.weights = weights
        self.allow_disconnected = bool(allow_disconnected)
        self.faults: MosaicFaults | None = None
        self.on_nonfinite = on_nonfinite
        self.protocol: FragmentGossip | None = None
        self._mixer: ShardedMixer | None = None
        self._rank, self._world_size = 0, 1
        self._latest_step = 0
        self._pending_state: dict[str, Any] | None = None
        self._target: GossipTarget | None = None
        self._distance = ConsensusDistance()

    @property
    def state_key(self) -> str:
        """The gossip settings, without an edge-list file's path: the same graph read from another path is the same
        run (the checkpoint compares the graph's hash, :meth:`check_checkpoint`)."""
        return self._generate_state_key(**{k: v for k, v in self._config().items() if k != "graph"})

    @property
    def rounds(self) -> int:
        """Gossip rounds run so far."""
        return 0 if self.protocol is None else self.protocol.rounds

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        world, rank = trainer.world_size, trainer.global_rank
        found = [c for c in trainer.callbacks if isinstance(c, MosaicFaults)]  # type: ignore[attr-defined]
        if len(found) > 1:
            raise ValueError(
                f"trainer.callbacks holds {len(found)} MosaicFaults callbacks; a run has one fault model, pass one"
            )
        self.faults = found[0] if found else None
        if self.faults is not None:
            self.faults.follow(self)
        if world > 1:
            check_multiprocess_module(trainer, pl_module)
            self._check_same_settings_on_every_rank(pl_module, world)
        self.attach(pl_module, world_size=world, rank=rank)

    def attach(self, pl_module: LightningModule, world_size: int = 1, rank: int = 0) -> FragmentGossip:
        """Build the gossip protocol for ``pl_module`` (idempotent; ``setup`` calls it).

        Call it before ``Trainer.fit`` to check the configuration against the module without starting anything.

        Args:
            pl_module: A gossip target such as a :class:`~lightning_mosaic.MosaicModule` (n nodes, possibly spread
                over the processes), or, in a multi-process run, any ``LightningModule`` (each process is one node,
                n = ``world_size``).
            world_size: Number of processes (``trainer.world_size``).
            rank: This process's global rank.

        Raises:
            TypeError: If ``pl_module`` is not a gossip target and ``world_size < 2``.
            ValueError: If ``peers``, ``topology`` or ``fragments`` do not fit the module's n and d.
        """
        if self.protocol is not None and (self._world_size, self._rank) == (world_size, rank):
            return self.protocol
        target = as_gossip_target(pl_module, world_size, rank)
        num_nodes, sizes = target.num_nodes, target.parameter_sizes
        protocol_args = {k: v for k, v in self._config().items() if k not in GRAPH_DEFAULTS and k != "every_n_steps"}
        graph_args = {**self._graph_config(), "shape": self.shape}
        protocol = FragmentGossip(sizes, num_nodes, kernel=self.kernel, **protocol_args, **graph_args)
        if world_size > 1:
            bounds = node_bounds(num_nodes, world_size)
            self._mixer = ShardedMixer(bounds, rank, protocol.fragmentation, protocol.messages_per_node)
        self._rank, self._world_size = rank, world_size
        self._target = target
        self.protocol = protocol
        if self._pending_state is not None:
            self.load_state_dict(self._pending_state)
        return protocol

    def _check_same_settings_on_every_rank(self, pl_module: LightningModule, world_size: int) -> None:
        """Gather every rank's gossip and fault settings and refuse any difference (before anything else can hang on
        it): one ``all_gather_object``."""
        target = as_gossip_target(pl_module, world_size, dist.get_rank())
        mine = {**self._config(), "num_nodes": target.num_nodes, "num_coordinates": sum(target.parameter_sizes)}
        mine.update({f"faults.{key}": value for key, value in self._fault_settings().items()})
        hparams = getattr(pl_module, "hparams", {})
        for key in ("seed", "init"):
            if key in hparams:
                mine[f"model.{key}"] = hparams[key]
        everyone: list[Any] = [None] * world_size
        dist.all_gather_object(everyone, mine)
        reference = everyone[0]
        for other_rank, theirs in enumerate(everyone[1:], start=1):
            diffs = [
                f"{k}={theirs.get(k)!r} on rank {other_rank}, {v!r} on rank 0"
                for k, v in reference.items()
                if theirs.get(k) != v
            ]
            if diffs:
                raise ValueError(
                    "the processes of this run were started with different gossip settings, which would corrupt "
                    "the gossip: " + "; ".join(diffs)
                )

    @property
    def _faults_active(self) -> bool:
        return self.faults is not None and self.faults.active

    def _fault_settings(self) -> dict[str, Any]:
        """The settings of this run's fault model (:data:`~lightning_mosaic.callbacks.faults.NO_FAULTS` without
        one, or when it configures no fault)."""
        if self.faults is None:
            return dict(NO_FAULTS)
        settings = self.faults.settings
        return settings if faults_configured(settings) else dict(NO_FAULTS)

    def should_gossip(self, step: int) -> bool:
        """Whether a round runs after optimizer step ``step`` (``trainer.global_step``, from 1); override for
        another schedule. Default: every ``every_n_steps`` steps."""
        return step % self.every_n_steps == 0

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step <= self._latest_step:  # no optimizer step in this batch (gradient accumulation)
            return
        self._latest_step = step
        if not self.should_gossip(step):
            return
        assert self.protocol is not None and self._target is not None
        protocol, target, sharded = self.protocol, self._target, self._world_size > 1
        local = target.gossip_rows()  # (m, d): in place for a MosaicModule, a copy of one node's parameters else
        rounds_before = protocol.rounds
        stats = None
        try:
            bad, any_bad = self._nonfinite(local, protocol.num_nodes)
            offline = None
            if any_bad:
                nodes = bad.nonzero().flatten().tolist()
                message = (
                    f"nodes {nodes} have NaN or Inf parameters after local training, before gossip round "
                    f"{protocol.rounds + 1} (global step {step})"
                )
                if self.on_nonfinite == "raise":
                    raise NonFiniteParametersError(
                        message + "; nothing was sent. Lower the learning rate, clip gradients, or pass "
                        "on_nonfinite='isolate' to keep such nodes out of the gossip"
                    )
                rank_zero_warn(message + "; they are isolated for this round (neither send nor receive)")
                offline = bad
            churned = self.faults.offline(rounds_before + 1).to(bad.device) if self._faults_active else None
            if churned is not None and bool(churned.any()):
                offline = churned if offline is None else offline | churned
            with torch.no_grad():
                if sharded:
                    stats = self._mixer.mix_(local, protocol.next_graphs(offline), offline)
                else:
                    protocol.round_(local, offline)
            target.load_gossip_rows(local)
            distance = self._consensus_distance(local, bad, any_bad)
        except (RuntimeError, dist.DistBackendError) as error:
            if not sharded or isinstance(error, NonFiniteParametersError):
                raise
            raise self._communication_error(error, rounds_before + 1, step) from error
        metrics = {
            "gossip/consensus_distance": distance.float(),
            "gossip/values_sent_per_node": float(
                values_sent_per_node(protocol.num_coordinates, protocol.messages_per_node)
            ),
            "gossip/round": float(protocol.rounds),
        }
        if sharded:
            metrics["gossip/bytes_sent_per_rank"] = float(stats.bytes_sent)
        if self.on_nonfinite == "isolate":
            metrics["gossip/isolated_nodes"] = float(bad.sum())
        if churned is not None:
            metrics["gossip/offline_nodes"] = float(churned.sum())
        pl_module.log_dict(metrics, on_step=True, on_epoch=False)

    def _consensus_distance(self, local: Tensor, bad: Tensor, any_bad: bool) -> Tensor:
        """Consensus distance after the round over the nodes that took part (every rank calls it: all-reduces)."""
        protocol, sharded = self.protocol, self._world_size > 1
        assert protocol is not None
        own_bad = bad[self._mixer.lo : self._mixer.hi] if sharded else bad
        good = local[~own_bad] if any_bad else local
        nodes = protocol.num_nodes - int(bad.sum()) if any_bad else protocol.num_nodes
        return self._distance(good, nodes, sharded=sharded)

    def _communication_error(self, error: BaseException, round_: int, step: int) -> GossipCommunicationError:
        return GossipCommunicationError(
            describe_failure(error, f"gossip round {round_} (global step {step})", f"round-{round_}")
        )

    def _nonfinite(self, local: Tensor, num_nodes: int) -> tuple[Tensor, bool]:
        """``(n,)`` bool mask of the nodes, over all processes, whose parameters hold NaN or Inf, and whether any does
        (one host sync in the usual all-finite case)."""
        # One read of the rows: a row holding NaN or Inf sums to NaN or Inf, so finite sums (the usual case) prove
        # every row finite without the (m, d) mask of isfinite; only a non-finite sum (which a finite row can also
        # reach by overflow) needs the exact test.
        own = ~torch.isfinite(local.sum(dim=1))
        own_bad = bool(own.any())
        if own_bad:
            own = nonfinite_nodes(local)
            own_bad = bool(own.any())
        if self._world_size == 1:
            return own, own_bad
        everyone = torch.zeros(num_nodes, dtype=torch.uint8, device=local.device)
        everyone[self._mixer.lo : self._mixer.hi] = own.to(torch.uint8)
        dist.all_reduce(everyone, op=dist.ReduceOp.MAX)
        everyone = everyone.to(torch.bool)
        return everyone, bool(everyone.any())

    def spectral_gap(self) -> float:
        """1 - the second largest eigenvalue modulus of one fragment's (expected) mixing matrix
        (:meth:`~lightning_mosaic.gossip.FragmentGossip.spectral_gap`); known after setup."""
        assert self.protocol is not None, "spectral_gap() is known after setup"
        return self.protocol.spectral_gap()

    def graph_settings(self) -> dict[str, Any] | None:
        """The fixed-graph settings that differ from their defaults (``degree``, ``graph``, ``shape``,
        ``directed``, ``weights``, ``allow_disconnected``), the rule the aggregation runs (``weights``:
        ``"metropolis-hastings"``, ``"uniform"`` or ``"el"``), the smallest and largest degree and ``edges`` (undirected
        edges, or directed links u -> v of a directed graph); ``None`` for EL topologies."""
        if self.protocol is None or self.protocol.graph is None:
            return None
        degrees = self.protocol.graph.degrees
        settings = {key: value for key, value in self._graph_config().items() if value != GRAPH_DEFAULTS[key]}
        return {
            **settings,
            "weights": self.protocol.weights_name,
            "min_degree": int(degrees.min()),
            "max_degree": int(degrees.max()),
            "edges": int(degrees.sum()) if self.protocol.graph.directed else int(degrees.sum()) // 2,
        }

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Log the spectral gap of the (expected) mixing matrix once, as ``gossip/spectral_gap`` at step 0."""
        gap = self.spectral_gap()
        for logger in trainer.loggers:
            logger.log_metrics({"gossip/spectral_gap": gap}, step=0)

    def communication(self) -> dict[str, int]:
        """Per-node, per-round communication: ``values_sent_per_node`` (s * d) and ``bytes_sent_per_node``."""
        assert self.protocol is not None, "communication() is known after setup"
        d, messages = self.protocol.num_coordinates, self.protocol.messages_per_node
        return {
            "values_sent_per_node": values_sent_per_node(d, messages),
            "bytes_sent_per_node": bytes_sent_per_node(d, messages),
        }

    def _config(self) -> dict[str, Any]:
        """The settings that define the gossip stream: the state key, the checkpoint check and the protocol."""
        return {
            "fragments": self.fragments,
            "peers": self.peers,
            "topology": self.topology,
            "fragmentation": self.fragmentation,
            "every_n_steps": self.every_n_steps,
            "seed": self.seed,
            "drop_prob": self.drop_prob,
            **{key: value for key, value in self._graph_config().items() if value != GRAPH_DEFAULTS[key]},
        }

    def _graph_config(self) -> dict[str, Any]:
        """The fixed-graph settings (in :meth:`_config` only where they differ from :data:`GRAPH_DEFAULTS`, so
        that EL runs keep their state key and checkpoints)."""
        return {
            "degree": self.degree,
            "graph": self.graph,
            "shape": None if self.shape is None else list(self.shape),
            "directed": self.directed,
            "weights": self.weights,
            "allow_disconnected": self.allow_disconnected,
        }

    def on_load_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint whose gossip was configured differently (K, s, topology, fragmentation, seed, ...),
        or, in a run without :class:`~lightning_mosaic.callbacks.MosaicFaults`, one written with faults.

        A checkpoint whose gossip state also holds the fault settings (``availability``, ``churn_trace``,
        ``straggler_prob`` under another :attr:`state_key`) is loaded when its gossip settings match and its fault
        settings match this run's :class:`~lightning_mosaic.callbacks.MosaicFaults` (drawn with the gossip's seed),
        or are the defaults in a run without one; it is refused otherwise.

        Raises:
            ValueError: Naming every setting that differs, with the checkpoint's and this run's values.
        """
        found = self.check_checkpoint(checkpoint, self.faults)
        if found is not None and found[0] != self.state_key:
            self.load_state_dict(found[1])  # same gossip, fault settings checked: only its key differs

    def check_checkpoint(
        self, checkpoint: dict[str, Any], faults: MosaicFaults | None
    ) -> tuple[str, dict[str, Any]] | None:
        """The checks of :meth:`on_load_checkpoint`, changing nothing: whether ``checkpoint`` can continue this run
        (after :meth:`attach`), for a run whose fault model is ``faults`` (``None``: none). The CLI calls it before
        anything is written, so a refused resume leaves no run folder.

        Returns:
            ``(state key, state)`` of the checkpoint's gossip state, or ``None`` if it holds none.

        Raises:
            ValueError: Naming every setting that differs, with the checkpoint's and this run's values.
        """
        if faults is None:
            saved = checkpoint_fault_settings(checkpoint)
            diffs = [d for d in fault_differences(saved, dict(NO_FAULTS)) if not d.startswith("seed=")]
            if diffs:
                settings = ", ".join(f"{k}={v!r}" for k, v in saved.items())
                raise ValueError(
                    "the checkpoint was written by a run with churn or stragglers, so it cannot continue this one "
                    f"without them: {'; '.join(diffs)}; add lightning_mosaic.callbacks.MosaicFaults({settings}) to "
                    "trainer.callbacks"
                )
        states = checkpoint.get("callbacks", {})
        ours = self._comparable(self._config())
        mine = self._graph_fingerprint()
        for key, state in states.items():
            if key.startswith(type(self).__qualname__) and isinstance(state, dict) and "config" in state:
                saved = self._comparable(state["config"])
                theirs = state.get("graph_fingerprint")
                same_graph = theirs is not None and mine is not None
                # every key of this run's gossip, defaults included (an older checkpoint's fault keys are checked
                # above); a fixed graph's file path is left to the graph's hash
                names = [k for k in ours if not (same_graph and k == "graph")]
                diffs = [
                    f"{k}={saved.get(k)!r} in the checkpoint, {ours.get(k)!r} here"
                    for k in names
                    if saved.get(k) != ours.get(k)
                ]
                if same_graph and theirs != mine:
                    diffs.append(
                        f"the {ours['topology']} graph itself differs (its neighbour table and weights hash to "
                        f"{theirs[:12]} in the checkpoint, {mine[:12]} here: another edge-list file, or the file was "
                        "edited)"
                    )
                if diffs:
                    raise ValueError(
                        "the checkpoint was written by a run with other gossip settings, so it cannot continue this "
                        "one: " + "; ".join(diffs)
                    )
                return key, state
        return None

    def _comparable(self, config: dict[str, Any]) -> dict[str, Any]:
        """A saved or current :meth:`_config` with every default filled in and resolved, so that two runs compare
        equal exactly when they gossip alike: the graph settings at :data:`GRAPH_DEFAULTS`, a regular graph's
        degree from ``peers``, and ``weights`` as the rule the aggregation runs (``"el"`` where peers are sampled or
        on the one-peer exponential graph, else the weights, Metropolis-Hastings by default)."""
        full = {**GRAPH_DEFAULTS, **config}
        if full.get("topology") == "regular" and full["degree"] is None and full.get("peers") != "all":
            full["degree"] = full.get("peers")
        if full.get("topology") in GRAPH_TOPOLOGIES and self.protocol is not None:
            same_graph = full.get("topology") == self.topology and full.get("peers") == self.peers
            if same_graph and self.protocol.weights_name == "el":
                full["weights"] = "el"  # None and "uniform" are the same rule there
            elif full["weights"] is None:
                full["weights"] = "metropolis-hastings"
        return full

    def _graph_fingerprint(self) -> str | None:
        """The hash of this run's fixed graph and its weights
        (:meth:`~lightning_mosaic.gossip.FragmentGossip.graph_fingerprint`), ``None`` for EL topologies or before
        setup."""
        return None if self.protocol is None else self.protocol.graph_fingerprint()

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"latest_step": self._latest_step, "config": self._config()}
        fingerprint = self._graph_fingerprint()
        if fingerprint is not None:
            state["graph_fingerprint"] = fingerprint
        if self.protocol is not None:
            state.update(self.protocol.state_dict())
        elif self._pending_state is not None:
            return {**self._pending_state, "config": self._config()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._latest_step = int(state_dict.get("latest_step", 0))
        if self.protocol is None:
            self._pending_state = dict(state_dict)
            return
        if "generator" in state_dict:
            self.protocol.load_state_dict(state_dict)
        self._pending_state = None
