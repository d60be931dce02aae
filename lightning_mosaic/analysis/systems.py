"""Quadratic decentralized systems: n nodes, d parameters, one gradient step then one Mosaic gossip round.

Modelled on the simplified convex system that Mosaic Learning (arXiv 2602.04352) uses for its figures 2 and 3
(n = 50 nodes, d = 16 parameters, correlated parameters); the curvature, step size and topology are ours to choose
(see ``docs/analysis.md``). Node i minimises

    f_i(x) = 1/2 (x - x_i*)^T A_i (x - x_i*),

where the curvature A_i (d, d) couples correlated parameters and the per-node optima x_i* carry the data
heterogeneity. With X (n, d) holding one row per node, one round is

    X_{t+1} = Mix_{K,t}(X_t - eta * grad F(X_t)),   grad F(X)[i] = A_i (x_i - x_i*),

and ``Mix_{K,t}`` is the library's own gossip round (``FragmentGossip.round_``: X[:, P_k] <- W_k X[:, P_k]).

Vectorised, with vec(X) stacking the columns of X (index ``c * n + i`` is coordinate c of node i), the linear part of
a round is the (n d, n d) matrix

    M_t[(c, i), (a, j)] = W_{k(c), t}[i, j] * (I - eta A_j)[c, a],

block-diagonal over coordinates in its mixing factor: coordinate c, in fragment k(c), is mixed by W_{k(c)} (n, n).
The disagreement subspace is the orthogonal complement of the consensus vectors (x_i equal across nodes, per
coordinate): in every coordinate block it is the complement of the all-ones vector, projected by
P = I - 11^T / n; :func:`disagreement_basis` gives an orthonormal basis U (n, n - 1) of it. Because every W_k is
row-stochastic, P W_k = P W_k P, so the disagreement part of M_t's output depends only on the disagreement part of its
input when the curvature is shared (A_i = A): the disagreement then evolves autonomously under
Q^T M_t Q with Q = I_d kron U (:meth:`QuadraticSystem.disagreement_operator`). With per-node curvature the consensus
part leaks into the disagreement and Q^T M_t Q is only the compression of M_t to that subspace.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch
from torch import Tensor

from lightning_mosaic._validation import check_int
from lightning_mosaic.gossip.fragmentation import Fragmentation

CurvatureName = Literal["equicorrelated", "random", "random-per-node"]
CURVATURES: tuple[str, ...] = get_args(CurvatureName)


def disagreement_basis(num_nodes: int) -> Tensor:
    """Orthonormal basis of the disagreement subspace of one coordinate, {v in R^n : sum_i v_i = 0}.

    The (normalised) Helmert contrasts: column m (m = 1..n-1) is (1, ..., 1, -m, 0, ..., 0) / sqrt(m (m + 1)), with
    m ones. U^T U = I_{n-1} and U U^T = P = I - 11^T / n.

    Args:
        num_nodes: n >= 2.

    Returns:
        ``(n, n - 1)`` float64 tensor U.
    """
    n = check_int("num_nodes (n)", num_nodes, 2)
    basis = torch.zeros(n, n - 1, dtype=torch.float64)
    for m in range(1, n):
        basis[:m, m - 1] = 1.0
        basis[m, m - 1] = -float(m)
        basis[:, m - 1] /= math.sqrt(m * (m + 1))
    return basis


def curvature_matrix(dim: int, correlation: float, kind: str = "equicorrelated", *, seed: int = 0) -> Tensor:
    """A (d, d) curvature matrix with correlated parameters, scaled to largest eigenvalue 1 (1-smooth objective).

    * ``"equicorrelated"``: A proportional to (1 - rho) I + rho 11^T: every pair of parameters has correlation rho
      (eigenvalues 1 - rho, d - 1 times, and 1 + (d - 1) rho along 11^T). Invariant under permuting the
      coordinates, so which coordinates share a fragment does not matter, only the fragment sizes.
    * ``"random"``: A proportional to (1 - rho) I + rho C, with C = D^{-1/2} G G^T D^{-1/2} the correlation matrix
      of a (d, d) standard Gaussian G drawn from ``numpy.random.default_rng(seed)`` (D = diag(G G^T)), so pairwise
      correlations are rho * C_ab, random in sign and size.

    Args:
        dim: d >= 1.
        correlation: rho in [0, 1). 0 gives A = I (uncorrelated parameters).
        kind: ``"equicorrelated"`` or ``"random"``.
        seed: Seed of the ``"random"`` draw.

    Returns:
        ``(d, d)`` float64 symmetric positive definite tensor with largest eigenvalue 1.

    Raises:
        ValueError: If ``dim`` < 1, ``correlation`` is outside [0, 1) or ``kind`` is unknown.
    """
    d = check_int("dim (d)", dim, 1)
    if isinstance(correlation, bool) or not isinstance(correlation, (int, float)) or not 0.0 <= correlation < 1.0:
        raise ValueError(f"correlation must be a number in [0, 1), got {correlation!r}")
    if kind == "equicorrelated":
        base = np.ones((d, d))
    elif kind == "random":
        g = np.random.default_rng(seed).standard_normal((d, d))
        gram = g @ g.T
        scale = 1.0 / np.sqrt(np.diag(gram))
        base = gram * scale[:, None] * scale[None, :]
    else:
        raise ValueError(f"curvature must be one of ('equicorrelated', 'random'), got {kind!r}")
    a = (1.0 - correlation) * np.eye(d) + correlation * base
    a = (a + a.T) / 2
    return torch.from_numpy(a / np.linalg.eigvalsh(a)[-1])


@dataclass(frozen=True)
class QuadraticSystem:
    """n quadratic objectives f_i(x) = 1/2 (x - x_i*)^T A_i (x - x_i*) and the local step size.

    Attributes:
        curvature: ``(n, d, d)`` float64, A_i per node (all equal when ``shared``).
        optima: ``(n, d)`` float64, x_i* per node.
        step_size: eta > 0 (the local step is x_i - eta A_i (x_i - x_i*)).
        shared: Whether every node has the same curvature (the disagreement then evolves autonomously).
    """

    curvature: Tensor
    optima: Tensor
    step_size: float
    shared: bool

    @property
    def num_nodes(self) -> int:
        """n."""
        return int(self.optima.shape[0])

    @property
    def dim(self) -> int:
        """d."""
        return int(self.optima.shape[1])

    def contraction(self) -> Tensor:
        """``(n, d, d)`` float64 B_i = I - eta A_i, the linear part of node i's local gradient step."""
        eye = torch.eye(self.dim, dtype=torch.float64)
        return eye - self.step_size * self.curvature

    def local_step(self, params: Tensor) -> Tensor:
        """One gradient step per node: ``X - eta * grad F(X)`` for ``params`` X of shape ``(n, d)`` (new tensor)."""
        residual = params.to(torch.float64) - self.optima
        return params - self.step_size * torch.einsum("icd,id->ic", self.curvature, residual).to(params.dtype)

    def round_operator(self, matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
        """The linear part M_t of one round, acting on vec(X) (index ``c * n + i``).

        M_t[(c, i), (a, j)] = W_{k(c)}[i, j] (I - eta A_j)[c, a] (module docstring).

        Args:
            matrices: ``(..., K, n, n)`` mixing matrices of a round (``FragmentGossip.next_matrices``), optionally
                with leading batch dimensions (several rounds at once).
            fragmentation: The partition of the d coordinates into K fragments.

        Returns:
            ``(..., n d, n d)`` float64 tensor.
        """
        n, d = self.num_nodes, self.dim
        per_coordinate = matrices.to(torch.float64)[..., fragmentation.assignment, :, :]  # (..., d, n, n)
        operator = torch.einsum("...cij,jca->...ciaj", per_coordinate, self.contraction())
        return operator.reshape(*matrices.shape[:-3], d * n, d * n)

    def disagreement_operator(self, matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
        """Q^T M_t Q with Q = I_d kron U: M_t restricted to the disagreement subspace, in the basis of
        :func:`disagreement_basis` (index ``c * (n - 1) + m``).

        Exact (the disagreement evolves autonomously under it) for a shared curvature; the compression of M_t to the
        disagreement subspace otherwise.

        Args:
            matrices: ``(..., K, n, n)``, as in :meth:`round_operator`.
            fragmentation: The partition of the d coordinates.

        Returns:
            ``(..., d (n - 1), d (n - 1))`` float64 tensor.
        """
        n, d = self.num_nodes, self.dim
        basis = disagreement_basis(n)
        batch = matrices.shape[:-3]
        operator = self.round_operator(matrices, fragmentation).reshape(*batch, d, n, d, n)
        reduced = torch.einsum("ip,...ciaj,jq->...cpaq", basis, operator, basis)
        return reduced.reshape(*batch, d * (n - 1), d * (n - 1))


def mixing_operator(matrices: Tensor, fragmentation: Fragmentation) -> Tensor:
    """The mixing factor of M_t alone: blockdiag_c W_{k(c)} on vec(X) (index ``c * n + i``).

    Args:
        matrices: ``(K, n, n)`` mixing matrices of one round.
        fragmentation: The partition of the d coordinates into K fragments.

    Returns:
        ``(n d, n d)`` float64 tensor.
    """
    return torch.block_diag(*matrices.to(torch.float64)[fragmentation.assignment])


def make_system(
    num_nodes: int,
    dim: int,
    correlation: float,
    curvature: str = "equicorrelated",
    *,
    step_size: float = 0.5,
    heterogeneity: float = 0.0,
    seed: int = 0,
) -> QuadraticSystem:
    """Build a :class:`QuadraticSystem`.

    Args:
        num_nodes: n >= 2.
        dim: d >= 1.
        correlation: rho in [0, 1), see :func:`curvature_matrix`.
        curvature: ``"equicorrelated"`` or ``"random"`` (one A shared by all nodes), or ``"random-per-node"``
            (node i gets its own ``"random"`` A_i, seed ``seed + 1 + i``).
        step_size: eta in (0, 2): the local step contracts every direction since the largest eigenvalue of A_i is 1.
        heterogeneity: zeta >= 0; the optima are x_i* = zeta * xi_i with xi_i ~ N(0, I_d) i.i.d. from
            ``numpy.random.default_rng(seed)``. 0: every node has the same optimum (0), so the disagreement decays
            geometrically.
        seed: Seed of the random curvature and optima.

    Raises:
        ValueError: For any argument outside the ranges above, naming it.
    """
    n = check_int("num_nodes (n)", num_nodes, 2)
    d = check_int("dim (d)", dim, 1)
    if curvature not in CURVATURES:
        raise ValueError(f"curvature must be one of {CURVATURES}, got {curvature!r}")
    if isinstance(step_size, bool) or not isinstance(step_size, (int, float)) or not 0.0 < step_size < 2.0:
        raise ValueError(f"step_size must be a number in (0, 2), got {step_size!r}")
    if isinstance(heterogeneity, bool) or not isinstance(heterogeneity, (int, float)) or not heterogeneity >= 0:
        raise ValueError(f"heterogeneity must be a number >= 0, got {heterogeneity!r}")
    if curvature == "random-per-node":
        per_node = [curvature_matrix(d, correlation, "random", seed=seed + 1 + i) for i in range(n)]
        matrices, shared = torch.stack(per_node), False
    else:
        matrices, shared = curvature_matrix(d, correlation, curvature, seed=seed).expand(n, d, d).clone(), True
    optima = torch.from_numpy(heterogeneity * np.random.default_rng(seed).standard_normal((n, d)))
    return QuadraticSystem(matrices, optima, float(step_size), shared)
