"""Fragment-wise mixing of an (n, d) parameter matrix. Pure tensor code (no Lightning)."""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_mosaic.gossip import fused
from lightning_mosaic.gossip.fragmentation import Fragmentation


def _check_params(params: Tensor, fragmentation: Fragmentation) -> None:
    if params.dim() != 2:
        raise ValueError(f"params must be an (n, d) matrix, got shape {tuple(params.shape)}")
    if fragmentation.num_coordinates != params.shape[1]:
        raise ValueError(
            f"the fragmentation covers d = {fragmentation.num_coordinates} coordinates but params has "
            f"d = {params.shape[1]}"
        )


def _check(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> None:
    _check_params(params, fragmentation)
    n = params.shape[0]
    k = fragmentation.num_fragments
    if tuple(matrices.shape) != (k, n, n):
        raise ValueError(
            f"matrices must have shape (K, n, n) = ({k}, {n}, {n}) for {k} fragments and {n} nodes, "
            f"got {tuple(matrices.shape)}"
        )


@torch.no_grad()
def mix_(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
    """Apply one round of fragment-wise mixing in place: ``X[:, P_k] <- W_k @ X[:, P_k]`` for every k.

    Every fragment is aggregated from the pre-round values (the fragments are disjoint and each product is computed
    before it is written back), so the result does not depend on the order in which messages arrive
    (Mosaic Learning, arXiv 2602.04352, Algorithm 1). Extra memory: one fragment, ``(n, d_k)``.

    Args:
        params: ``(n, d)`` parameter matrix, one row per node; overwritten.
        matrices: ``(K, n, n)`` row-stochastic mixing matrices (see :func:`~lightning_mosaic.gossip.mixing_matrices`).
        fragmentation: The partition of the d columns into K fragments.

    Returns:
        ``params``, mixed.

    Raises:
        ValueError: If the shapes of ``params``, ``matrices`` and ``fragmentation`` disagree.
    """
    _check(params, matrices, fragmentation)
    matrices = matrices.to(device=params.device, dtype=params.dtype)
    if fragmentation.slices is not None:
        for w, cols in zip(matrices, fragmentation.slices):
            params[:, cols] = w @ params[:, cols]
        return params
    for w, idx in zip(matrices, fragmentation.indices):
        idx = idx.to(params.device)
        params.index_copy_(1, idx, w @ params.index_select(1, idx))
    return params


def mix(params: Tensor, matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
    """Out-of-place :func:`mix_`: returns the mixed ``(n, d)`` matrix and leaves ``params`` unchanged."""
    return mix_(params.detach().clone(), matrices, fragmentation)


def _check_receivers(params: Tensor, receivers: Tensor, delivered: Tensor | None, fragmentation: Fragmentation) -> None:
    _check_params(params, fragmentation)
    n, k = params.shape[0], fragmentation.num_fragments
    if receivers.dim() != 3 or tuple(receivers.shape[:2]) != (k, n):
        raise ValueError(
            f"receivers must have shape (K, n, s) with K = {k} fragments and n = {n} nodes, "
            f"got {tuple(receivers.shape)}"
        )
    if delivered is not None and delivered.shape != receivers.shape:
        raise ValueError(
            f"delivered must have the shape of receivers {tuple(receivers.shape)}, got {tuple(delivered.shape)}"
        )


SELF_WEIGHT_TOLERANCE = 1e-9
"""How far below 0 a receiver's self weight (1 - the weights of the messages it received, float64) may fall before
:func:`aggregation_weights` refuses the weights; rounding in sums of weights such as ``1/3`` stays far below it."""


def _check_weights(weights: Tensor, receivers: Tensor) -> None:
    if weights.shape != receivers.shape:
        raise ValueError(
            f"weights must have the shape of receivers {tuple(receivers.shape)}, got {tuple(weights.shape)}"
        )
    if not weights.is_floating_point():
        raise ValueError(f"weights must be a floating-point tensor (float64), got {weights.dtype}")


@torch.no_grad()
def aggregation_weights(
    receivers: Tensor, delivered: Tensor | None, weights: Tensor, dtype: torch.dtype = torch.float64
) -> tuple[Tensor, Tensor]:
    """The weights of one weighted round (D-PSGD), computed once in float64: the one function every kernel and
    backend (torch, fused, dense, :class:`~lightning_mosaic.distributed.ShardedMixer`) takes them from, so that all
    multiply by the same numbers.

    Receiver j's fragment k becomes ``self[k, j] x_j + sum of message[k, i, r] x_i`` over the delivered messages
    ``(k, i, r)`` with ``receivers[k, i, r] = j``, where ``self[k, j] = 1 - sum of those messages' weights``: a lost
    or undelivered message's weight stays with the receiver (the standard D-PSGD treatment of a dropped edge).

    Args:
        receivers: ``(K, n, s)`` int64, ``receivers[k, i, r]`` = the r-th peer node i sends fragment k to.
        delivered: Optional ``(K, n, s)`` bool, ``False`` where that message is lost (default: all arrive).
        weights: ``(K, n, s)`` floating, ``weights[k, i, r]`` = the weight the receiver ``receivers[k, i, r]`` gives
            to node i's fragment k (0 on padding).
        dtype: dtype of the returned tensors (the parameters'); both are computed in float64 and cast once.

    Returns:
        ``(message, self)`` on the CPU in ``dtype``: ``message`` ``(K, n, s)`` (the weights, 0 where not delivered)
        and ``self`` ``(K, n)`` (1 minus the float64 sum of the delivered weights each (fragment, receiver) got).

    Raises:
        ValueError: If ``weights`` is not a floating-point tensor shaped like ``receivers``, holds a negative or
            non-finite value, or gives a receiver delivered weights summing above 1 (naming the fragment, the node
            and the sum).
    """
    _check_weights(weights, receivers)
    w = weights.detach().to(device="cpu", dtype=torch.float64)
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        bad = (~torch.isfinite(w) | (w < 0)).nonzero()[0].tolist()
        raise ValueError(
            f"weights must be finite and >= 0, got {float(w[tuple(bad)])} at (fragment, sender, slot) = {tuple(bad)}"
        )
    if delivered is not None:
        w = torch.where(delivered.to(device="cpu", dtype=torch.bool), w, 0.0)
    k, n, s = receivers.shape
    received = torch.zeros(k, n, dtype=torch.float64)
    received.scatter_add_(1, receivers.to("cpu").reshape(k, n * s), w.reshape(k, n * s))
    own = 1.0 - received
    if bool((own < -SELF_WEIGHT_TOLERANCE).any()):
        frag, node = (own < -SELF_WEIGHT_TOLERANCE).nonzero()[0].tolist()
        raise ValueError(
            f"weights: node {node} receives fragment {frag} with weights summing to {float(received[frag, node])}, "
            "above 1 (its own value would get a negative weight)"
        )
    return w.to(dtype), own.to(dtype)


def weighted_mixing_matrices(
    receivers: Tensor, delivered: Tensor | None, weights: Tensor, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The ``(K, n, n)`` mixing matrices of a weighted round, for the dense kernel (:func:`mix_`): ``W[k, j, i]`` =
    the weight of node i's delivered message to j, ``W[k, j, j]`` = j's self weight, both from
    :func:`aggregation_weights` (built in float64, cast to ``dtype`` once). Memory ``O(K n^2)``.

    Raises:
        ValueError: See :func:`aggregation_weights`.
    """
    message, own = aggregation_weights(receivers, delivered, weights)
    k, n, _ = receivers.shape
    sends = torch.zeros(k, n, n, dtype=torch.float64)
    sends.scatter_add_(2, receivers.to("cpu"), message)  # sends[k, i, j]: weight j gives to i's fragment
    matrices = sends.transpose(1, 2).contiguous()
    matrices.diagonal(dim1=1, dim2=2).add_(own)
    return matrices.to(dtype)


@torch.no_grad()
def average_received_(
    own: Tensor,
    messages: list[tuple[Tensor, ...]],
    out: Tensor,
    *,
    spare: bool = False,
    accumulator: Tensor | None = None,
    self_weight: Tensor | None = None,
    product: Tensor | None = None,
) -> Tensor:
    """The aggregation rule of Epidemic and Mosaic Learning and of D-PSGD: the one implementation every torch kernel
    runs.

    Without ``self_weight`` (the EL rule): row r of ``out`` becomes ``(own[r] + sum of the messages addressed to r) /
    (1 + their number)`` (de Vos et al., NeurIPS 2023, Eq. 2; per fragment in Mosaic Learning). With ``self_weight``
    (a weighted round, D-PSGD): row r becomes ``self_weight[r] * own[r] + sum of weight[i] * values[i]`` over the
    messages addressed to r (the weights from :func:`aggregation_weights`). Messages are added in the order given
    (pair by pair, row by row), after the own value, so the sums are reproducible. The fused CPU backend
    (:mod:`lightning_mosaic.gossip.fused`) computes the same products and sums in the same order; the dense kernel
    (:func:`mix_`) is the test oracle.

    Args:
        own: ``(R, q)`` the receivers' own values before the round (read once, before any message is added).
        messages: ``(values (M_j, q), destination (M_j,) int64)`` pairs, or with ``self_weight``
            ``(values, destination, weight (M_j,))`` triples (``weight`` in ``own``'s dtype): message i of an entry
            goes to row ``destination[i]`` in ``[0, R)``, or to ``R`` (a lost message, counted nowhere) with
            ``spare``.
        out: Where the result goes, ``(R, q)`` or any ``(..., q)`` view of R rows (e.g. ``(n, K_g, q)`` columns
            of the parameters, which cannot be viewed as ``(R, q)``). It may be ``own`` itself.
        spare: Whether a destination may be ``R``.
        accumulator: Optional ``(R + spare, q)`` scratch rows of ``own``'s dtype and device, reused across rounds;
            default: allocated here.
        self_weight: ``(R,)`` in ``own``'s dtype: the weighted rule, with these self weights; ``None``: the EL rule.
        product: With ``self_weight``: optional contiguous scratch of at least ``max M_j * q`` values of ``own``'s
            dtype for the weighted messages; default: allocated here.

    Returns:
        ``out``.
    """
    rows, width = own.shape[0], own.shape[0] + int(spare)
    acc = own.new_empty(width, own.shape[1]) if accumulator is None else accumulator
    if self_weight is not None:
        torch.mul(own, self_weight.view(rows, 1), out=acc[:rows])
        acc[rows:].zero_()
        for values, destination, weight in messages:
            size = values.shape[0] * values.shape[1]
            scratch = values.new_empty(size) if product is None else product[:size]
            acc.index_add_(0, destination, torch.mul(values, weight.view(-1, 1), out=scratch.view(values.shape)))
        return out.copy_(acc[:rows].view(out.shape))
    acc[:rows].copy_(own)
    acc[rows:].zero_()
    counts = torch.ones(width, dtype=own.dtype, device=own.device)
    for values, destination in messages:
        acc.index_add_(0, destination, values)
        counts.index_add_(0, destination, torch.ones(destination.numel(), dtype=own.dtype, device=own.device))
    return torch.div(acc[:rows].view(out.shape), counts[:rows].view(*out.shape[:-1], 1), out=out)


def mix_received_(
    params: Tensor,
    receivers: Tensor,
    delivered: Tensor | None,
    fragmentation: Fragmentation,
    workspace: Tensor | None = None,
    backend: str = "auto",
    weights: Tensor | None = None,
) -> Tensor:
    """One round of fragment-wise mixing in place from receiver lists, without any ``n x n`` matrix.

    Computes exactly what :func:`mix_` computes with the matrices of the same graphs (up to float rounding), from
    the pre-round values. Without ``weights`` (EL, de Vos et al. 2023, Eq. 2):
    ``x_j[P_k] <- (x_j[P_k] + sum of the copies of fragment k node j received) / (m_jk + 1)``. With ``weights``
    (D-PSGD, e.g. Metropolis-Hastings weights): ``x_j[P_k] <- (1 - sum of w_m) x_j[P_k] + sum of w_m x_i[P_k]`` over
    the messages m (from node i) of fragment k that j received (:func:`aggregation_weights`; a lost message's weight
    stays with the receiver).

    Two implementations give bit-identical results (same products and sums in the same order, same division).
    ``"fused"`` (:mod:`lightning_mosaic.gossip.fused`, numba, CPU float32/float64): one cache-blocked pass over the
    matrix. ``"torch"``: a scatter-add in torch operators, for any device and dtype: all equal-sized fragments
    (:attr:`Fragmentation.groups`) are one ``(n * K_g, q)`` row block, and each of the s message slots is one
    ``index_add_`` of that block (times the slot's weights, when weighted) into an accumulator. An undelivered
    message is added to a spare row that is thrown away, so a node's values (even NaN) never reach a node that
    should not receive them. Work ``O(s n d)``, extra memory at most ``(2 n + 1) d`` values, ``(3 n + 1) d``
    weighted (:func:`workspace_size`; none for the fused backend's "tiles" layout) plus ``O(K n s)`` indices.

    Args:
        params: ``(n, d)`` parameter matrix, one row per node; overwritten.
        receivers: ``(K, n, s)`` int64, ``receivers[k, i]`` = the peers node i sends fragment k to
            (:func:`~lightning_mosaic.gossip.sample_receivers`).
        delivered: Optional ``(K, n, s)`` bool, ``False`` where that message is lost or its sender or receiver is
            offline, or where the entry is padding (default: every message arrives).
        fragmentation: The partition of the d columns into K fragments.
        workspace: Optional 1-D scratch tensor of ``params``' dtype and device with at least
            :func:`workspace_size` elements (of the backend that runs, ``weighted`` when ``weights`` is given),
            reused across rounds so that no large buffer is allocated (and page-faulted in) every round; default:
            allocate per call.
        backend: One of :data:`BACKENDS`: ``"fused"``, ``"torch"``, or ``"auto"`` (:func:`default_backend`).
        weights: Optional ``(K, n, s)`` float64, ``weights[k, i, r]`` = the weight ``receivers[k, i, r]`` gives to
            node i's fragment k (0 on padding); ``None``: the EL rule.

    Returns:
        ``params``, mixed.

    Raises:
        ValueError: If the shapes of ``params``, ``receivers``, ``delivered``, ``weights`` and ``fragmentation``
            disagree, ``weights`` are invalid (:func:`aggregation_weights`), ``workspace`` is too small, or
            ``backend`` is unknown or ``"fused"`` cannot run on ``params``.
    """
    _check_receivers(params, receivers, delivered, fragmentation)
    if weights is not None:
        _check_weights(weights, receivers)
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        backend = default_backend(params)
    elif backend == "fused" and not _fused_runs_on(params):
        raise ValueError(
            f"backend='fused' needs float32/float64 parameters on the CPU and numba installed, got {params.dtype} "
            f"on {params.device} (numba {'installed' if fused.available() else 'missing'})"
        )
    weighted = weights is not None
    needed = workspace_size(params.shape[0], fragmentation, backend, params.element_size(), weighted)
    if workspace is None:
        workspace = params.new_empty(needed)
    elif workspace.numel() < needed or workspace.dtype != params.dtype or workspace.device != params.device:
        raise ValueError(
            f"workspace must hold at least {needed} {params.dtype} values on {params.device}"
            f"{' (weighted)' if weighted else ''}, got {workspace.numel()} {workspace.dtype} values on "
            f"{workspace.device}"
        )
    coefficients = aggregation_weights(receivers, delivered, weights, params.dtype) if weighted else None
    if backend == "fused":
        strategy = fused.default_strategy(params.shape[0], fragmentation.num_fragments, params.element_size())
        return fused.mix_received_fused_(
            params, receivers, delivered, fragmentation.assignment, strategy, workspace, coefficients
        )
    n = params.shape[0]
    receivers = receivers.to(params.device)
    if delivered is not None:
        delivered = delivered.to(params.device)
    if coefficients is not None:
        message_weight, self_weight = (c.to(params.device) for c in coefficients)
    for group in fragmentation.groups:
        frags = group.fragments.to(params.device)
        kg, q = frags.numel(), group.size
        rows = n * kg
        cols = group.columns if isinstance(group.columns, slice) else group.columns.to(params.device)
        acc = workspace[: (rows + 1) * q].view(rows + 1, q)
        used = (rows + 1) * q
        if isinstance(cols, slice):
            block = params[:, cols]
        else:
            block = workspace[used : used + rows * q].view(n, kg * q)
            used += rows * q
            torch.index_select(params, 1, cols, out=block)
        source = block.reshape(rows, q)  # row i * kg + g: node i, fragment frags[g]; a view unless a partial slice
        # destination row of the message of slot r from (i, g): receivers[frags[g], i, r] * kg + g
        dst = receivers.index_select(0, frags).permute(2, 1, 0) * kg + torch.arange(kg, device=params.device)
        if delivered is not None:
            dst = torch.where(delivered.index_select(0, frags).permute(2, 1, 0), dst, rows)
        weighting: dict[str, Tensor] = {}
        if coefficients is None:
            slots = [(source, slot) for slot in dst.reshape(dst.shape[0], rows)]
        else:  # the weights laid out like the rows: (node, fragment of the group)
            slot_weights = message_weight.index_select(0, frags).permute(2, 1, 0).reshape(dst.shape[0], rows)
            slots = [(source, slot, w) for slot, w in zip(dst.reshape(dst.shape[0], rows), slot_weights)]
            weighting = {
                "self_weight": self_weight.index_select(0, frags).t().reshape(rows),
                "product": workspace[used : used + rows * q],
            }
        if isinstance(cols, slice):  # the result goes straight into the parameters
            average_received_(source, slots, params[:, cols].view(n, kg, q), spare=True, accumulator=acc, **weighting)
        else:
            mixed = average_received_(source, slots, acc[:rows], spare=True, accumulator=acc, **weighting)
            params.index_copy_(1, cols, mixed.view(n, kg * q))
    return params


def workspace_size(
    num_nodes: int,
    fragmentation: Fragmentation,
    backend: str | None = None,
    itemsize: int = 4,
    weighted: bool = False,
) -> int:
    """Scratch elements :func:`mix_received_` needs for n nodes: the torch backend needs, per fragment group, an
    ``(n K_g + 1, q)`` accumulator, plus an ``(n, K_g q)`` gathered block when the group's columns are not one
    range, plus, ``weighted`` (a round with ``weights``), an ``(n K_g, q)`` block of weighted messages; the fused one
    ``n d`` with its "sorted" layout and none with "tiles" (:func:`fused.default_strategy
    <lightning_mosaic.gossip.fused.default_strategy>` for n, K and ``itemsize``), weighted or not. ``backend=None``:
    enough for either backend and layout, at most ``(2 n + 1) d``, ``(3 n + 1) d`` weighted.

    Raises:
        ValueError: If ``backend`` is not ``None``, ``"fused"`` or ``"torch"``.
    """
    if backend not in (None, "fused", "torch"):
        raise ValueError(f"backend must be None, 'fused' or 'torch', got {backend!r}")
    if backend == "fused":
        strategy = fused.default_strategy(num_nodes, fragmentation.num_fragments, itemsize)
        return fused.workspace_size(num_nodes, fragmentation.num_coordinates, strategy)
    sizes = [] if backend == "torch" else [fused.workspace_size(num_nodes, fragmentation.num_coordinates, "sorted")]
    for group in fragmentation.groups:
        rows = num_nodes * group.fragments.numel()
        gathered = 0 if isinstance(group.columns, slice) else rows * group.size
        sizes.append((rows + 1) * group.size + gathered + (rows * group.size if weighted else 0))
    return max(sizes)


BACKENDS: tuple[str, ...] = ("auto", "fused", "torch")
"""Implementations of the index kernel (:func:`mix_received_`); both give bit-identical results."""


FUSED_MIN_VALUES = 1 << 22
"""Fewest values per round (n * d, 4,194,304) for which ``backend="auto"`` runs the fused backend. From ``python -m
benchmarks.backend`` (table in ``docs/benchmarks.md``; one gossip round, EL-Local, s = 3, random fragmentation,
float32, n = 16 / 64 / 256, K = 1 / 8 / 64, n * d = 2^14 to 2^23; 2 shared x86-64 cores, 4 runs, medians): the
smallest size from which the fused round was at least 10% faster than the torch one at every (n, K); below it some
(n, K) were slower with the fused kernel in the median, which does not pay for the 20-27 s of numba compilation of
the first fused round after install."""


def _fused_runs_on(params: Tensor) -> bool:
    """Whether the fused backend can mix ``params``: float32/float64 on the CPU, numba installed (imports numba)."""
    return params.device.type == "cpu" and params.dtype in (torch.float32, torch.float64) and fused.available()


def default_backend(params: Tensor) -> str:
    """The backend ``backend="auto"`` runs for ``params`` (``(n, d)``): ``"fused"`` from
    :data:`FUSED_MIN_VALUES` values on, for float32/float64 CPU parameters when numba is installed, else ``"torch"``.

    Below the threshold the fused kernel's gain is not measurable, and choosing it would import numba and compile its
    kernels (seconds, once per install); numba is not even imported then. On GPUs the torch scatter-add runs at memory
    bandwidth already (``docs/benchmarks.md``). Both backends give bit-identical results, so the choice never changes
    a seeded run.
    """
    if params.numel() < FUSED_MIN_VALUES or not _fused_runs_on(params):
        return "torch"
    return "fused"


KERNELS: tuple[str, ...] = ("auto", "dense", "index")
"""Mixing kernels: ``"dense"`` (:func:`mix_` with ``(K, n, n)`` matrices), ``"index"`` (:func:`mix_received_`)."""


def default_kernel(num_nodes: int, num_fragments: int) -> str:
    """The mixing kernel ``kernel="auto"`` uses for n nodes and K fragments: ``"index"`` at every size.

    From ``python -m benchmarks.run --sections mixing`` on 2 idle cores (table in ``docs/benchmarks.md``, random
    fragmentation, s = 3), kernel time / copy floor: the index kernel with its fused CPU backend is faster than the
    dense one (one ``(n, n) @ (n, d_k)`` product per fragment) at every (n, d, K) of the grid but one, n = 16, K = 1,
    where both take 1.6-1.8x; e.g. 4.8x against 10.6x at n = 16, d = 9e4, K = 8 and 1.2x against 9.0x at n = 256,
    d = 1e6, K = 1. ``kernel="dense"`` (``--gossip.kernel dense``) reproduces the results CHANGELOG.md names bit for
    bit. The two kernels draw the same graphs and agree to float rounding.
    """
    del num_nodes, num_fragments  # one kernel for every size, kept in the signature for the rule's callers
    return "index"
