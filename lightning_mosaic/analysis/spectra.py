r"""Spectra of the round operator M_t on the disagreement subspace, per draw and in mean square.

Two quantities of Mosaic Learning's simplified system (arXiv 2602.04352, figure 2: n = 50, d = 16),
both as functions of the number of fragments K, for the systems of :mod:`~lightning_mosaic.analysis.systems`:

1. **Per-draw contraction** ``lambda_max(M_t^T M_t)`` on the disagreement subspace (:func:`gram_spectrum`): the
   squared largest factor by which one round can stretch a disagreement vector, sampled over the rounds' random
   graphs. This is the quantity the paper's statement is about ("more fragments reduce the largest eigenvalue of
   M_t^T M_t"). :func:`gram_spectrum` also returns ``lambda_max`` of the sample mean of M_t^T M_t;
   :func:`mean_gram_largest` gives ``lambda_max(E[M_t^T M_t])`` exactly.
2. **Mean-square contraction**: the spectral radius of the second-moment operator
   S(Sigma) = E[M_t Sigma M_t^T] (the matrix of E[M_t (x) M_t]) on the disagreement subspace
   (:func:`second_moment_radius`). It is the rate at which the expected consensus distance decays when all nodes
   share one optimum: E||Z_t||^2 ~ rho(S)^t.

Derivation of the reduced second-moment operator (shared curvature A, B = I - eta A, exact)
----------------------------------------------------------------------------------------------
Write the disagreement covariance Sigma in (d x d) blocks of (n - 1) x (n - 1) matrices Sigma_{cc'} (coordinates c,
c', disagreement basis U of each coordinate, W~ = U^T W U; P W = P W P because W is row-stochastic). One round is
Z -> D~ (B kron I) Z with D~ = blockdiag_c W~_{k(c)}, so with Gamma = (B kron I) Sigma (B kron I)^T:

    S(Sigma)_{cc'} = E[ W~_{k(c)} Gamma_{cc'} W~_{k(c')}^T ].

*Per fragment pair*: if c and c' are in the same fragment they see the same matrix W: the block is
T_same(Gamma_{cc'}) = E[W~ Gamma_{cc'} W~^T]; in different fragments the matrices are independent draws:
T_diff(Gamma_{cc'}) = E[W~] Gamma_{cc'} E[W~]^T. The state is still d^2 (n - 1)^2 numbers (614,656 for the paper's
sizes), so one more reduction:

*Node symmetry*: EL-Local and EL-Oracle graphs are invariant in distribution under relabelling the nodes, so S
commutes with Sigma -> (I kron Pi~) Sigma (I kron Pi~)^T for every node permutation Pi. S maps positive
semidefinite matrices to positive semidefinite matrices, so (Krein-Rutman) its spectral radius is an eigenvalue
with a PSD eigenvector; averaging that eigenvector over the node permutations gives a nonzero PSD eigenvector for the
same eigenvalue whose blocks commute with every node permutation acting on 1^perp; that action (the standard
representation of the symmetric group) is irreducible, so by Schur's lemma Sigma_{cc'} = C_{cc'} I_{n-1}. On that
invariant subspace E[W~] = alpha I and E[W~ W~^T] = beta I, with

    alpha = (E tr W - 1) / (n - 1),           (P E[W] P = alpha P)
    beta  = E ||P W||_F^2 / (n - 1),          (P E[W P W^T] P = beta P)

so S acts on the (d, d) matrix C as

    S_red(C) = H o (B C B^T),   H = alpha^2 11^T + (beta - alpha^2) F,   F_{cc'} = [k(c) = k(c')],

(o: entrywise product) and rho(S) = rho(S_red), a d^2 x d^2 problem (256 x 256 for d = 16). Checked against the
brute-force (n d)^2 operator on tiny cases in ``tests/test_analysis.py``.

Consequences, exact: with uncorrelated parameters (A = I) S_red(C) has the diagonal of C as an invariant part with
rate beta (1 - eta)^2 whatever K is; for K = 1 (F = 11^T) rho = beta * rho(B)^2 (Epidemic Learning); and
E[M_t^T M_t] = (B^T B) kron E[W~^T W~] = (B^T B) kron beta I does not depend on K at all (each coordinate's
block only sees its own W).

alpha is exact for both topologies: EL-Local in-degrees are Binomial(n - 1, p), p = s / (n - 1), and
W_jj = 1 / (1 + m_j), so E tr W = (1 - (1 - p)^n) / p; EL-Oracle W = (I + A) / (s + 1) gives tr W = n / (s + 1).
beta is exact for EL-Oracle (W doubly stochastic and ||W||_F^2 = tr W, so beta = alpha) and a Monte Carlo average
over the library's own EL-Local matrices otherwise (with its standard error).

Fixed graphs (not node-exchangeable)
------------------------------------
The node-symmetry step above needs a distribution of graphs invariant under relabelling the nodes: EL-Local and
EL-Oracle only. On a fixed graph (:data:`~lightning_mosaic.gossip.GRAPH_TOPOLOGIES`) the reduced operator does not
apply, and each quantity is computed by the method :func:`topology_methods` names:

- *A fixed graph used whole, or the one-peer exponential cycle* (``FragmentGossip.sampled`` is false): the rounds
  draw nothing, M~_t runs through a fixed period of P rounds (P = 1 for a graph used whole, tau = ceil(log2 n) for
  one-peer exponential), and :func:`deterministic_moments` is exact: the mean-square rate per round is
  rho(M~_{P-1} ... M~_0)^(2 / P) (for P = 1, rho(E[M~ kron M~]) = rho(M~ kron M~) = rho(M~)^2), and
  lambda_max(E[M~^T M~]) is that of the mean of M~_t^T M~_t over the period (a uniformly random round of the
  period, as for the spectral gap), i.e. lambda_max(M~^T M~) for P = 1.
- *Peers sampled among a fixed graph's neighbours*: no exact reduction holds and the exact operator needs the
  fourth moments E[W kron W] of a non-symmetric distribution, so the second-moment radius is not given (NaN, with
  the reason; the consensus curves' decay rate is its Monte Carlo counterpart). lambda_max(E[M~^T M~]) still
  factors, with no symmetry: each coordinate's block only sees its own fragment's W and every fragment draws from
  one distribution, so E[M~^T M~] = (B^T B) kron G with G = E[W~^T W~], and lambda_max = lambda_max(B^T B)
  lambda_max(G) (both PSD). :func:`gram_moment` estimates lambda_max(G) by Monte Carlo with a standard error.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from scipy.sparse.linalg import LinearOperator, eigs, eigsh
from torch import Tensor

from lightning_mosaic._validation import check_int
from lightning_mosaic.analysis.systems import QuadraticSystem, disagreement_basis
from lightning_mosaic.gossip.fragmentation import Fragmentation
from lightning_mosaic.gossip.graphs import exponential_offsets
from lightning_mosaic.gossip.protocol import FragmentGossip
from lightning_mosaic.gossip.spectral import el_alpha
from lightning_mosaic.gossip.topology import mixing_matrices

MOMENT_CHUNK = 1000
"""Mixing matrices drawn per call of ``mixing_matrices`` when estimating beta (memory: chunk * n^2 * 8 bytes)."""

DENSE_LIMIT = 4096
"""Largest (d (n - 1))^2 accepted by :func:`second_moment_operator_dense` (its matrix has (d (n - 1))^4 entries)."""

DENSE_ROUND_LIMIT = 128
"""Largest d (n - 1) for which :func:`deterministic_moments` builds the round operators M~_t as dense matrices;
ARPACK on the matrix-free operators above (measured at n = 50, d = 16 on a ring: 0.016 s against 0.25 s dense, the
same numbers to 1e-14; ``tests/test_analysis.py`` checks both paths agree)."""

REDUCED = "reduced-operator"
"""Method name: the node-symmetric reduction of the module docstring (EL-Local, EL-Oracle)."""
EXACT_DETERMINISTIC = "exact-deterministic"
"""Method name: exact, from the fixed round operators of a topology that draws nothing
(:func:`deterministic_moments`)."""
MONTE_CARLO = "monte-carlo"
"""Method name: a Monte Carlo estimate with a standard error (:func:`gram_moment`)."""
NOT_AVAILABLE = "not-available"
"""Method name: no number (NaN), with the reason next to it."""


@dataclass(frozen=True)
class MixingMoments:
    """First and second moments of one fragment's mixing matrix W on the disagreement subspace.

    Attributes:
        alpha: (E tr W - 1) / (n - 1), so that P E[W] P = alpha P (exact, closed form).
        beta: E ||P W||_F^2 / (n - 1), so that P E[W P W^T] P = beta P.
        beta_stderr: Standard error of ``beta`` (0 when exact).
        draws: Number of matrices ``beta`` was averaged over (0 when exact).
    """

    alpha: float
    beta: float
    beta_stderr: float = 0.0
    draws: int = 0

    def beta_interval(self, confidence: float = 0.95) -> tuple[float, float]:
        """Normal-approximation confidence interval of ``beta`` (a point when exact)."""
        half = stats.norm.ppf(0.5 + confidence / 2) * self.beta_stderr
        return self.beta - half, self.beta + half


def exact_alpha(topology: str, num_nodes: int, peers: int) -> float:
    """alpha = (E tr W - 1) / (n - 1) in closed form (module docstring;
    :func:`~lightning_mosaic.gossip.spectral.el_alpha`).

    Raises:
        ValueError: See :func:`~lightning_mosaic.gossip.validate_topology`.
    """
    return el_alpha(topology, num_nodes, peers)


def moments_from_matrices(matrices: Tensor, weights: Tensor | None = None) -> tuple[float, float, float]:
    """alpha, beta and the standard error of beta from explicit mixing matrices.

    Args:
        matrices: ``(R, n, n)`` row-stochastic matrices: R independent draws, or a whole finite distribution.
        weights: ``(R,)`` probabilities of a finite distribution; ``None``: equally weighted i.i.d. draws.

    Returns:
        ``(alpha, beta, beta_stderr)``; the standard error is 0 when ``weights`` is given (exact expectation).
    """
    w = matrices.to(torch.float64)
    n = w.shape[-1]
    trace = w.diagonal(dim1=1, dim2=2).sum(dim=1)
    centred = w - w.mean(dim=1, keepdim=True)  # P W
    frob = centred.square().sum(dim=(1, 2))
    if weights is not None:
        p = weights.to(torch.float64)
        return float((p @ trace - 1) / (n - 1)), float(p @ frob / (n - 1)), 0.0
    values = frob / (n - 1)
    stderr = float(values.std() / math.sqrt(values.numel())) if values.numel() > 1 else float("inf")
    return float((trace.mean() - 1) / (n - 1)), float(values.mean()), stderr


def mixing_moments(topology: str, num_nodes: int, peers: int, draws: int = 20000, seed: int = 0) -> MixingMoments:
    """alpha and beta of one fragment's mixing matrix for a topology (module docstring).

    alpha is always the closed form. beta is exact for ``"el-oracle"`` (beta = alpha; ``draws`` unused) and, for
    ``"el-local"``, the average over ``draws`` matrices of the library's
    :func:`~lightning_mosaic.gossip.mixing_matrices` drawn from ``torch.Generator().manual_seed(seed)``.

    Raises:
        ValueError: For an impossible (topology, n, s), or ``draws`` < 2 with ``"el-local"``.
    """
    alpha = exact_alpha(topology, num_nodes, peers)
    if topology == "el-oracle":
        return MixingMoments(alpha, alpha)
    check_int("moment_draws", draws, 2)
    generator = torch.Generator().manual_seed(seed)
    values = []
    for start in range(0, draws, MOMENT_CHUNK):
        chunk = mixing_matrices(num_nodes, peers, min(MOMENT_CHUNK, draws - start), generator, topology)
        w = chunk.to(torch.float64)
        values.append((w - w.mean(dim=1, keepdim=True)).square().sum(dim=(1, 2)) / (num_nodes - 1))
    v = torch.cat(values)
    return MixingMoments(alpha, float(v.mean()), float(v.std() / math.sqrt(v.numel())), int(v.numel()))


def _same_fragment(assignment: Tensor) -> Tensor:
    a = assignment.to(torch.long)
    return (a[:, None] == a[None, :]).to(torch.float64)


def second_moment_operator(contraction: Tensor, assignment: Tensor, alpha: float, beta: float) -> Tensor:
    """The reduced second-moment operator S_red(C) = H o (B C B^T) as a (d^2, d^2) matrix (module docstring).

    Args:
        contraction: ``(d, d)`` B = I - eta A (shared curvature).
        assignment: ``(d,)`` fragment of each coordinate (``Fragmentation.assignment``).
        alpha: See :class:`MixingMoments`.
        beta: See :class:`MixingMoments`.

    Returns:
        ``(d^2, d^2)`` float64 tensor acting on row-major vec(C).
    """
    b = contraction.to(torch.float64)
    d = b.shape[0]
    mask = alpha**2 * torch.ones(d, d, dtype=torch.float64) + (beta - alpha**2) * _same_fragment(assignment)
    return mask.reshape(-1, 1) * torch.kron(b, b)


def spectral_radius(matrix: Tensor) -> float:
    """Largest modulus of the eigenvalues of a square matrix."""
    return float(torch.linalg.eigvals(matrix.to(torch.float64)).abs().max())


def second_moment_radius(
    system: QuadraticSystem, fragmentation: Fragmentation, moments: MixingMoments, confidence: float = 0.95
) -> tuple[float, float, float]:
    """Spectral radius of E[M_t (x) M_t] on the disagreement subspace, with the interval from beta's uncertainty.

    S_red is entrywise nondecreasing in beta (F o (B C B^T) is PSD for PSD C), so the interval of beta maps to an
    interval of the radius.

    Returns:
        ``(radius, low, high)`` (all equal when beta is exact).

    Raises:
        ValueError: If the system's curvature is not shared by all nodes (the disagreement is then not autonomous
            and the reduction does not apply; use the consensus-distance curves).
    """
    if not system.shared:
        raise ValueError("curvature must be shared by all nodes for the second-moment radius, got 'random-per-node'")
    b = system.contraction()[0]
    betas = [moments.beta] if moments.beta_stderr == 0 else [moments.beta, *moments.beta_interval(confidence)]
    radii = [_reduced_radius(b, fragmentation.assignment, moments.alpha, beta) for beta in betas]
    return (radii[0],) * 3 if len(radii) == 1 else (radii[0], radii[1], radii[2])


def _reduced_radius(contraction: Tensor, assignment: Tensor, alpha: float, beta: float) -> float:
    """rho(S_red) via a symmetric eigenproblem: S_red = diag(vec H) (B kron B) with H >= 0 entrywise and B kron B
    symmetric, so its eigenvalues are those of diag(h)^(1/2) (B kron B) diag(h)^(1/2) (faster than the general
    eigenvalue problem; equal to ``spectral_radius(second_moment_operator(...))``, checked in the tests)."""
    b = contraction.to(torch.float64)
    h = (alpha**2 + (beta - alpha**2) * _same_fragment(assignment)).reshape(-1).sqrt()
    symmetric = h[:, None] * torch.kron(b, b) * h[None, :]
    return float(torch.linalg.eigvalsh(symmetric).abs().max())


def mean_gram_largest(system: QuadraticSystem, moments: MixingMoments | float) -> float:
    """lambda_max(E[M~_t^T M~_t]) for a shared curvature: lambda_max(G) lambda_max(B^T B), whatever K is.

    E[M~^T M~] = sum_k (B^T Pi_k B) kron E[W~^T W~] (Pi_k: the coordinates of fragment k) = (B^T B) kron G with
    G = E[W~^T W~] when every fragment draws from one distribution; by node symmetry (EL topologies)
    G = gamma I with gamma = E ||P W P||_F^2 / (n - 1) = beta, so E[M~^T M~] = (B^T B) kron beta I.

    Args:
        system: The quadratic system.
        moments: The EL moments (beta is used), or lambda_max(G) itself (e.g. from :func:`gram_moment`).

    Raises:
        ValueError: If the curvature is not shared by all nodes.
    """
    if not system.shared:
        raise ValueError("curvature must be shared by all nodes for the exact mean Gram, got 'random-per-node'")
    b = system.contraction()[0]
    gamma = moments.beta if isinstance(moments, MixingMoments) else float(moments)
    return gamma * float(torch.linalg.eigvalsh(b.T @ b)[-1])


def topology_methods(gossip: FragmentGossip, shared: bool = True) -> tuple[str, str, str]:
    """How the second-moment radius and lambda_max(E[M~^T M~]) are computed for a topology (module docstring).

    Args:
        gossip: The protocol (its topology, peers and graph).
        shared: Whether the system's curvature is shared by all nodes.

    Returns:
        ``(radius_method, mean_gram_method, reason)``: each method one of :data:`REDUCED`,
        :data:`EXACT_DETERMINISTIC`, :data:`MONTE_CARLO`, :data:`NOT_AVAILABLE`; ``reason`` says why a
        quantity is not available (empty when both are).
    """
    if not shared:
        reason = (
            "the curvature differs between nodes (random-per-node): the disagreement is not autonomous, so neither "
            "the second-moment radius nor the exact mean Gram applies; consensus_decay_rate is the Monte Carlo rate"
        )
        return NOT_AVAILABLE, NOT_AVAILABLE, reason
    if gossip.graph is None:
        return REDUCED, REDUCED, ""
    if not gossip.sampled:
        return EXACT_DETERMINISTIC, EXACT_DETERMINISTIC, ""
    reason = (
        f"peers (s) = {gossip.peers} sampled among the neighbours of the {gossip.topology} graph: the graph is not "
        "node-exchangeable, so the reduced operator does not apply, and the exact (d (n - 1))^2 operator needs "
        "E[W kron W]; consensus_decay_rate is the Monte Carlo rate"
    )
    return NOT_AVAILABLE, MONTE_CARLO, reason


def deterministic_rounds(gossip: FragmentGossip) -> Tensor:
    """The ``(P, K, n, n)`` float64 mixing matrices of one period of a topology that draws nothing.

    P = 1 for a fixed graph used whole, tau = ceil(log2 n) for ``"one-peer-exponential"``. Drawn from a copy of
    ``gossip`` (it is not advanced), starting at its current round.

    Raises:
        ValueError: If ``gossip.sampled`` (its rounds are random).
    """
    if gossip.sampled:
        raise ValueError(f"topology={gossip.topology!r} with peers={gossip.peers!r} draws its rounds: no fixed period")
    period = len(exponential_offsets(gossip.num_nodes)) if gossip.topology == "one-peer-exponential" else 1
    replay = copy.deepcopy(gossip)
    return torch.stack([replay.next_matrices(torch.float64) for _ in range(period)])


def deterministic_moments(system: QuadraticSystem, gossip: FragmentGossip) -> tuple[float, float]:
    """The mean-square rate and lambda_max(E[M~^T M~]) of a topology that draws nothing, exactly (module docstring).

    Dense (``system.disagreement_operator``) while d (n - 1) <= :data:`DENSE_ROUND_LIMIT`; above, ARPACK on the
    matrix-free operators (``eigs`` for the period product's spectral radius, Lanczos for the mean Gram).

    Returns:
        ``(radius, mean_gram)``: rho(M~_{P-1} ... M~_0)^(2 / P), the per-round mean-square contraction of the
        disagreement (rho(M~)^2 for a graph used whole), and lambda_max of the mean of M~_t^T M~_t over the period.

    Raises:
        ValueError: If the curvature is not shared by all nodes (the disagreement is then not autonomous), or
            ``gossip.sampled``.
    """
    if not system.shared:
        raise ValueError("curvature must be shared by all nodes for the round operator's radius, got 'random-per-node'")
    rounds = deterministic_rounds(gossip)
    period = rounds.shape[0]
    d, m = system.dim, system.num_nodes - 1
    size = d * m
    if size <= DENSE_ROUND_LIMIT:
        operators = system.disagreement_operator(rounds, gossip.fragmentation)  # (P, D, D)
        product = operators[0]
        for operator in operators[1:]:
            product = operator @ product
        gram = torch.einsum("rab,rac->bc", operators, operators) / period
        return spectral_radius(product) ** (2.0 / period), float(torch.linalg.eigvalsh(gram)[-1])
    per_coordinate = rounds[:, gossip.fragmentation.assignment]  # (P, d, n, n)
    steps = [_DisagreementRounds(system, per_coordinate[t : t + 1]) for t in range(period)]

    def product_matvec(v: np.ndarray) -> np.ndarray:
        x = np.asarray(v, dtype=np.float64).reshape(d, m)
        for step in steps:
            x = step.apply(x)[0]
        return x.reshape(-1)

    operator = LinearOperator((size, size), matvec=product_matvec, dtype=np.float64)
    start = np.ones(size) / math.sqrt(size)
    largest = eigs(operator, k=1, which="LM", v0=start, return_eigenvectors=False, tol=1e-10)
    radius = float(np.abs(largest).max()) ** (2.0 / period)
    return radius, _largest_eigenvalue(size, _mean_gram_matvec(_DisagreementRounds(system, per_coordinate)))


def gram_moment(protocols: Sequence[FragmentGossip], draws: int) -> tuple[float, float, int]:
    """lambda_max(G), G = E[W~^T W~] of one fragment's mixing matrix (module docstring), by Monte Carlo.

    The draws are split evenly over ``protocols`` (e.g. one per seed, so a graph drawn from the seed is averaged
    over the seeds' graphs): each gives its next ``ceil(draws / len(protocols))`` rounds' first fragment, from a
    copy (the protocols are not advanced). The standard error is the delta method's: with v the top eigenvector of
    the estimate, the standard error of the mean of ||W~_r v||^2; it ignores the O(1 / draws) upward bias of the
    largest eigenvalue of a sample mean.

    Returns:
        ``(value, standard_error, draws_used)``.

    Raises:
        ValueError: If ``draws`` < 2 or ``protocols`` is empty.
    """
    check_int("moment_draws", draws, 2)
    if not protocols:
        raise ValueError("protocols must hold at least one FragmentGossip, got none")
    n = protocols[0].num_nodes
    basis = disagreement_basis(n)
    each = -(-draws // len(protocols))

    def reduced_draws():
        for protocol in protocols:
            replay = copy.deepcopy(protocol)
            for _ in range(each):
                yield basis.T @ replay.next_matrices(torch.float64)[0] @ basis

    total = torch.zeros(n - 1, n - 1, dtype=torch.float64)
    for w in reduced_draws():
        total += w.T @ w
    values, vectors = torch.linalg.eigh(total / (each * len(protocols)))
    top = vectors[:, -1]
    samples = torch.stack([(w @ top).square().sum() for w in reduced_draws()])
    stderr = float(samples.std() / math.sqrt(samples.numel()))
    return float(values[-1]), stderr, int(samples.numel())


def second_moment_operator_dense(
    system: QuadraticSystem,
    fragmentation: Fragmentation,
    matrices: Sequence[Tensor] | Tensor,
    weights: Tensor | None = None,
) -> Tensor:
    """Brute force E[M~_t kron M~_t], M~_t = Q^T M_t Q, over an explicit distribution of rounds (tiny systems).

    Args:
        system: The quadratic system.
        fragmentation: Its fragmentation.
        matrices: ``(R, K, n, n)``: the mixing matrices of R rounds (a whole finite distribution, or samples).
        weights: ``(R,)`` probabilities; ``None``: equal weights.

    Returns:
        ``(D^2, D^2)`` float64 tensor with D = d (n - 1).

    Raises:
        ValueError: If D^2 > :data:`DENSE_LIMIT` (memory guard).
    """
    size = system.dim * (system.num_nodes - 1)
    if size * size > DENSE_LIMIT:
        raise ValueError(f"d (n - 1) = {size} is too large for the dense operator (at most {int(DENSE_LIMIT**0.5)})")
    rounds = torch.stack(list(matrices)) if not isinstance(matrices, Tensor) else matrices
    count = rounds.shape[0]
    p = torch.full((count,), 1.0 / count, dtype=torch.float64) if weights is None else weights.to(torch.float64)
    m = system.disagreement_operator(rounds, fragmentation)  # (R, D, D)
    # kron(m, m)[(a, c), (b, e)] = m[a, b] m[c, e], averaged with the weights
    return torch.einsum("r,rab,rce->acbe", p, m, m).reshape(size * size, size * size)


@dataclass(frozen=True)
class GramSpectrum:
    """lambda_max(M~_t^T M~_t) over draws, and lambda_max of its mean.

    Attributes:
        largest: ``(draws,)`` float64 array, one value per sampled round.
        largest_of_mean: lambda_max(mean over the draws of M~_t^T M~_t).
    """

    largest: np.ndarray
    largest_of_mean: float


class _DisagreementRounds:
    """Matrix-free M~ = Q^T M_t Q for R rounds at once: O(R (d^2 n + d n^2)) per product instead of (d n)^2.

    numpy (single-threaded einsum): these products are small, and torch's intra-op threads made them 30 times
    slower on the shared 2-core test machine.
    """

    def __init__(self, system: QuadraticSystem, per_coordinate: Tensor) -> None:
        self.basis = disagreement_basis(system.num_nodes).numpy()  # (n, n - 1)
        self.contraction = system.contraction().numpy()  # (n, d, d): [j, c, a]
        self.mix = per_coordinate.to(torch.float64).numpy()  # (R, d, n, n): W_{k(c)} of each round
        self.shape = (system.dim, system.num_nodes - 1)

    def apply(self, v: np.ndarray) -> np.ndarray:
        """M~ v for ``v`` of shape ``(d, n - 1)``; returns ``(R, d, n - 1)``."""
        x = v @ self.basis.T  # (d, n): coordinate rows embedded in R^n
        y = np.einsum("jca,aj->cj", self.contraction, x)
        return np.einsum("rcij,cj->rci", self.mix, y) @ self.basis

    def apply_transpose(self, u: np.ndarray) -> np.ndarray:
        """M~^T u for ``u`` of shape ``(R, d, n - 1)``; returns ``(R, d, n - 1)``."""
        x = u @ self.basis.T  # (R, d, n)
        z = np.einsum("rcij,rci->rcj", self.mix, x)
        return np.einsum("jca,rcj->raj", self.contraction, z) @ self.basis


def _mean_gram_matvec(operator: _DisagreementRounds):
    """v -> mean over the rounds of M~_t^T M~_t v, on flat vectors of length d (n - 1)."""
    d, m = operator.shape

    def matvec(v: np.ndarray) -> np.ndarray:
        image = operator.apply(np.asarray(v, dtype=np.float64).reshape(d, m))
        return operator.apply_transpose(image).mean(axis=0).reshape(-1)

    return matvec


def _largest_eigenvalue(size: int, matvec) -> float:
    operator = LinearOperator((size, size), matvec=matvec, dtype=np.float64)
    start = np.ones(size) / math.sqrt(size)
    return float(eigsh(operator, k=1, which="LA", v0=start, return_eigenvectors=False, tol=1e-10)[0])


def gram_spectrum(
    system: QuadraticSystem, gossip: FragmentGossip | Sequence[FragmentGossip], draws: int
) -> GramSpectrum:
    """lambda_max(M~_t^T M~_t) for ``draws`` rounds of each ``gossip`` (Lanczos, matrix-free), and of their mean.

    The rounds are the next ``draws`` of ``gossip.next_matrices`` (the library's own graphs and fragmentation);
    every ``gossip`` is advanced. Several protocols (e.g. one per seed) also average over their fragmentations.

    Raises:
        ValueError: If ``draws`` < 1 or a ``gossip`` does not match the system's n and d.
    """
    check_int("draws", draws, 1)
    protocols = [gossip] if isinstance(gossip, FragmentGossip) else list(gossip)
    per_coordinate = []
    for protocol in protocols:
        if protocol.num_nodes != system.num_nodes or protocol.num_coordinates != system.dim:
            raise ValueError(
                f"gossip is for n = {protocol.num_nodes}, d = {protocol.num_coordinates} but the system has "
                f"n = {system.num_nodes}, d = {system.dim}"
            )
        assignment = protocol.fragmentation.assignment
        per_coordinate += [protocol.next_matrices(torch.float64)[assignment] for _ in range(draws)]
    per_coordinate = torch.stack(per_coordinate)
    rounds = _DisagreementRounds(system, per_coordinate)
    d, m = rounds.shape
    size = d * m

    single = [
        _largest_eigenvalue(size, _mean_gram_matvec(_DisagreementRounds(system, per_coordinate[r : r + 1])))
        for r in range(per_coordinate.shape[0])
    ]
    return GramSpectrum(np.asarray(single), _largest_eigenvalue(size, _mean_gram_matvec(rounds)))
