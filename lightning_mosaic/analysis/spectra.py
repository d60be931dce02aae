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
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy import stats
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import Tensor

from lightning_mosaic._validation import check_int
from lightning_mosaic.analysis.systems import QuadraticSystem, disagreement_basis
from lightning_mosaic.gossip.fragmentation import Fragmentation
from lightning_mosaic.gossip.protocol import FragmentGossip
from lightning_mosaic.gossip.spectral import el_alpha
from lightning_mosaic.gossip.topology import mixing_matrices

MOMENT_CHUNK = 1000
"""Mixing matrices drawn per call of ``mixing_matrices`` when estimating beta (memory: chunk * n^2 * 8 bytes)."""

DENSE_LIMIT = 4096
"""Largest (d (n - 1))^2 accepted by :func:`second_moment_operator_dense` (its matrix has (d (n - 1))^4 entries)."""


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


def mean_gram_largest(system: QuadraticSystem, moments: MixingMoments) -> float:
    """lambda_max(E[M~_t^T M~_t]) for a shared curvature, exactly: beta * lambda_max(B^T B), whatever K is.

    E[M~^T M~] = sum_k (B^T Pi_k B) kron E[W~^T W~] (Pi_k: the coordinates of fragment k), and by node symmetry
    E[W~^T W~] = gamma I with gamma = E ||P W P||_F^2 / (n - 1) = beta, so E[M~^T M~] = (B^T B) kron beta I.

    Raises:
        ValueError: If the curvature is not shared by all nodes.
    """
    if not system.shared:
        raise ValueError("curvature must be shared by all nodes for the exact mean Gram, got 'random-per-node'")
    b = system.contraction()[0]
    return moments.beta * float(torch.linalg.eigvalsh(b.T @ b)[-1])


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

    def gram_of(operator: _DisagreementRounds):
        def matvec(v: np.ndarray) -> np.ndarray:
            image = operator.apply(np.asarray(v, dtype=np.float64).reshape(d, m))
            return operator.apply_transpose(image).mean(axis=0).reshape(-1)

        return matvec

    single = [
        _largest_eigenvalue(size, gram_of(_DisagreementRounds(system, per_coordinate[r : r + 1])))
        for r in range(per_coordinate.shape[0])
    ]
    return GramSpectrum(np.asarray(single), _largest_eigenvalue(size, gram_of(rounds)))
