"""n replicas of one ``nn.Module`` whose parameters live in a single contiguous ``(n, d)`` buffer.

Row i of the buffer is node i's flat parameter vector (trainable tensors concatenated in ``named_parameters()``
order), so a gossip round is in-place matrix work on it and one elementwise optimizer on the buffer is n independent
per-node optimizers. Forward passes run all replicas either vectorized (``torch.func.vmap`` over
``torch.func.functional_call``) or as a per-node Python loop; both compute the same function.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any, Literal, get_args

import torch
from lightning_utilities.core.apply_func import apply_to_collection
from torch import Tensor, nn
from torch.func import functional_call, vmap

from lightning_mosaic._validation import check_int
from lightning_mosaic.seeding import INIT_STREAM, derive_seed

Execution = Literal["auto", "vmap", "loop"]
EXECUTIONS: tuple[str, ...] = get_args(Execution)
Init = Literal["same", "independent"]
INITS: tuple[str, ...] = get_args(Init)


def default_execution(device: torch.device, model: nn.Module) -> str:
    """The execution path ``execution="auto"`` picks for ``model`` on ``device``.

    From ``benchmarks/execution_paths.py`` (table in ``docs/execution.md``; n = 16, 2 CPU cores): on CPU, vmap is
    3.0-3.4x faster than the loop for the digits MLP, but up to 2x slower for GN-LeNet (loop / vmap time 0.51 at
    B = 32, 0.92 at B = 8), whose batched convolutions become grouped convolutions; so on CPU a model with
    convolutions runs as a loop, anything else vectorized. On CUDA: vmap, one kernel sequence for all nodes instead of
    n: 7-10x faster than the loop for GN-LeNet at n = 64 and 256, B = 32, on an H200 (``benchmarks/gpu.py``,
    ``docs/benchmarks.md``).

    Recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU``) have no vmap batching rule: such a model runs as a loop on
    every device.
    """
    if any(isinstance(m, nn.RNNBase) for m in model.modules()):
        return "loop"
    if device.type == "cpu" and any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules()):
        return "loop"
    return "vmap"


def stack_outputs(outputs: list[Any]) -> Any:
    """Stack per-node outputs of one structure (tensor, tuple, list, namedtuple or dict of them) along a new dim 0.

    Example:
        >>> out = stack_outputs([(torch.zeros(2), {"a": torch.ones(1)}), (torch.ones(2), {"a": torch.zeros(1)})])
        >>> tuple(out[0].shape), tuple(out[1]["a"].shape)
        ((2, 2), (2, 1))
    """
    first = outputs[0]
    if isinstance(first, Tensor):
        return torch.stack(outputs)
    if isinstance(first, Mapping):
        return type(first)({key: stack_outputs([o[key] for o in outputs]) for key in first})  # type: ignore[call-arg]
    if isinstance(first, tuple) and hasattr(first, "_fields"):
        return type(first)(*(stack_outputs(list(parts)) for parts in zip(*outputs)))
    if isinstance(first, (tuple, list)):
        return type(first)(stack_outputs(list(parts)) for parts in zip(*outputs))
    raise TypeError(f"a node's model output must be a tensor or a tuple, list or dict of tensors, got {type(first)}")


def tensor_shapes(collection: Any) -> list[tuple[int, ...]]:
    """The shapes of the tensors in a (nested tuple, list or dict) collection, in traversal order.

    Example:
        >>> tensor_shapes((torch.zeros(2, 3), {"y": torch.zeros(2)}, "id"))
        [(2, 3), (2,)]
    """
    shapes: list[tuple[int, ...]] = []
    apply_to_collection(collection, Tensor, lambda t: shapes.append(tuple(t.shape)))
    return shapes


def node_batch_size(batch: Any) -> int:
    """B of a batch: the first dimension of its first tensor that has one (1 without such a tensor)."""
    return next((shape[0] for shape in tensor_shapes(batch) if shape), 1)


def select_node(collection: Any, node: int) -> Any:
    """Row ``node`` of every tensor in a (nested tuple, list or dict) collection of ``(n, ...)`` tensors."""
    return apply_to_collection(collection, Tensor, lambda t: t[node])


class _CallOn(nn.Module):
    """Holds a module as its child ``m`` so that ``functional_call`` can run any function of it, not only forward."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.m = module

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.m, *args)


def _build(model: Callable[[], nn.Module], seed: int) -> nn.Module:
    """``model()`` under a seeded RNG (the caller's RNG state is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = model()
    if not isinstance(module, nn.Module):
        raise TypeError(f"model must be an nn.Module or a callable returning one, it returned {type(module)}")
    return module


class ReplicaStack(nn.Module):
    """n replicas of a model with parameters stored as one ``(n, d)`` ``nn.Parameter``.

    Args:
        model: An ``nn.Module`` (used as the template; its weights are copied to every node, ``init="same"`` only)
            or a zero-argument callable returning a fresh module (called under a seeded RNG).
        num_nodes: n >= 1.
        init: ``"same"`` (every node starts from the same weights, as in EL and Mosaic Learning) or
            ``"independent"`` (node i's weights come from its own seeded initialization).
        seed: Seed of the initialization (used when ``model`` is a callable, and for every node with
            ``init="independent"``).
        template_device: ``"meta"`` (default): the template's own tensors move to the meta device (it only
            supplies code); ``"keep"``: they stay real, for templates whose code reads its own state (a
            LightningModule's ``self.device``, its metrics), at the cost of one more copy of the model.

    Buffers (e.g. BatchNorm's running statistics) are stacked per node as ``(n, ...)`` tensors and are never
    gossiped: node i's buffers are updated only by node i's own training forward passes.

    Train and eval mode follow this module's ``training`` flag (``stack.train()`` / ``stack.eval()``, which
    Lightning sets around every evaluation): every replica and the averaged model run in that mode. In eval mode a
    forward is deterministic (no dropout, normalization from the running statistics) and never changes a buffer:
    the replicas run on copies of the stacked buffers. So node i's outputs in eval mode are exactly those of
    ``model()`` loaded with :meth:`node_state` ``(i)`` and put in eval mode.

    Raises:
        ValueError: If ``num_nodes`` < 1, ``init`` is unknown, ``init="independent"`` is given a module instance
            (pass its class or a factory), the model has no trainable parameters, or they have several dtypes or
            devices.
        TypeError: If ``model`` is neither a module nor a callable returning one.

    Buffers must be updated in place (as BatchNorm does): a buffer re-assigned in ``forward``
    (``self.ema = ...``) is not kept, because ``torch.func.functional_call`` restores the module's tensors after
    each call.
    """

    def __init__(
        self,
        model: nn.Module | Callable[[], nn.Module],
        num_nodes: int,
        *,
        init: str = "same",
        seed: int = 0,
        template_device: Literal["meta", "keep"] = "meta",
    ) -> None:
        super().__init__()
        check_int("num_nodes", num_nodes, 1)
        check_int("seed", seed, 0)
        if init not in INITS:
            raise ValueError(f"init must be one of {INITS}, got {init!r}")
        if not isinstance(model, nn.Module) and not callable(model):
            raise TypeError(f"model must be an nn.Module or a callable returning one, got {type(model)}")
        if isinstance(model, nn.Module) and init == "independent":
            raise ValueError(
                f"init='independent' draws every node's weights from its own seeded call of the model's class or "
                f"factory; got an instance of {type(model).__name__} (its own initialization would be lost): pass "
                f"the class or a zero-argument factory, e.g. model={type(model).__name__}"
            )
        if isinstance(model, nn.Module):
            template = copy.deepcopy(model)
        else:
            template = _build(model, derive_seed(seed, INIT_STREAM))
        named = [(name, p) for name, p in template.named_parameters() if p.requires_grad]
        if not named:
            raise ValueError(f"model {type(template).__name__} has no trainable parameters")
        for attribute in ("dtype", "device"):
            kinds: dict[object, str] = {}
            for name, p in named:
                kinds.setdefault(getattr(p, attribute), name)  # the first tensor of each kind
            if len(kinds) > 1:
                examples = ", ".join(f"{name} is {kind}" for kind, name in kinds.items())
                raise ValueError(
                    f"model {type(template).__name__} has trainable parameters of several {attribute}s ({examples}); "
                    f"every node's parameters are one row of an (n, d) tensor: move the whole model to one {attribute} "
                    f"(e.g. model.to({'torch.float32' if attribute == 'dtype' else 'cpu'})) before wrapping it"
                )
        self.num_nodes = num_nodes
        self.total_nodes = num_nodes
        """n over all processes (:attr:`num_nodes` is the number of rows held here)."""
        self.first_node = 0
        """Global index of row 0 (non-zero after :meth:`shard` when nodes are spread over processes)."""
        self.names = [name for name, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.num_coordinates = sum(self.sizes)
        dtype = named[0][1].dtype

        flat = torch.empty(num_nodes, self.num_coordinates, dtype=dtype)
        flat.copy_(self._flatten(dict(named)).expand(num_nodes, -1))
        if init == "independent":
            for i in range(1, num_nodes):
                module = _build(model, derive_seed(derive_seed(seed, INIT_STREAM), i))
                flat[i] = self._flatten(dict(module.named_parameters()))
        self.flat = nn.Parameter(flat.to(named[0][1].device))

        self.buffer_names = [name for name, _ in template.named_buffers()]
        for name, b in template.named_buffers():
            self.register_buffer(self._buffer_key(name), b.detach().unsqueeze(0).repeat_interleave(num_nodes, 0))
        frozen = {name: p.detach() for name, p in template.named_parameters() if not p.requires_grad}
        for name, p in frozen.items():  # frozen parameters are shared by all nodes and never trained
            self.register_buffer(self._buffer_key(name), p.clone())
        self.frozen_names = list(frozen)
        # The template only supplies the code: every parameter and buffer is passed to functional_call explicitly.
        if template_device not in ("meta", "keep"):
            raise ValueError(f"template_device must be 'meta' or 'keep', got {template_device!r}")
        # Tied parameters (one Parameter under several names, e.g. a decoder sharing the embedding) are one tensor
        # of the flat row, under its first name; moving to the meta device makes a new Parameter per module, so the
        # ties are made again there (functional_call keeps them: tie_weights=True).
        first_names: dict[int, str] = {}
        self.aliases: dict[str, str] = {}
        """Other names of tied parameters -> the name they are stored under."""
        for name, p in template.named_parameters(remove_duplicate=False):
            if id(p) in first_names:
                self.aliases[name] = first_names[id(p)]
            else:
                first_names[id(p)] = name
        if template_device == "meta":
            template = template.to("meta")
            for alias, name in self.aliases.items():
                owner, _, attribute = alias.rpartition(".")
                setattr(template.get_submodule(owner) if owner else template, attribute, template.get_parameter(name))
        self._template = [template]
        self._caller = [_CallOn(self._template[0])]

    @torch.no_grad()
    def shard(self, first: int, last: int) -> None:
        """Keep only nodes ``[first, last)`` (this process's nodes in a multi-process run); call before training.

        Row ``i`` then holds global node ``first + i``; :attr:`num_nodes` becomes ``last - first`` and
        :attr:`first_node` ``first``. Replaces :attr:`flat` with a new ``nn.Parameter``, so build optimizers after.

        Raises:
            ValueError: If ``[first, last)`` is empty or not inside the current nodes.
        """
        if not 0 <= first < last <= self.num_nodes:
            raise ValueError(f"cannot shard nodes [{first}, {last}) out of {self.num_nodes}")
        self.flat = nn.Parameter(self.flat.data[first:last].clone())
        for name in self.buffer_names:
            key = self._buffer_key(name)
            setattr(self, key, getattr(self, key)[first:last].clone())
        self.first_node += first
        self.num_nodes = last - first

    @staticmethod
    def _buffer_key(name: str) -> str:
        return "stacked__" + name.replace(".", "__")

    def _flatten(self, tensors: dict[str, Tensor]) -> Tensor:
        return torch.cat([tensors[name].detach().reshape(-1) for name in self.names])

    @property
    def template(self) -> nn.Module:
        """The module whose forward code every replica runs (its own tensors are on the meta device).

        It is held outside the module tree (so that its meta tensors are not parameters); its train/eval mode is
        set from :attr:`training` before every forward."""
        return self._template[0]

    def _moded_template(self) -> nn.Module:
        """The template in this stack's mode. The mode is read at call time, not propagated by ``train()``: Lightning
        restores modes after evaluation by setting each registered submodule's ``training`` flag directly."""
        template = self._template[0]
        if template.training != self.training:
            template.train(self.training)
        return template

    def node_buffers(self) -> dict[str, Tensor]:
        """The stacked ``(n, ...)`` buffers a forward runs on: the buffers themselves in train mode (a forward may
        update them, e.g. BatchNorm's running statistics), copies in eval mode (evaluation never changes a node's
        buffers)."""
        buffers = self.stacked_buffers()
        return buffers if self.training else {name: t.clone() for name, t in buffers.items()}

    def stacked_parameters(self, flat: Tensor | None = None) -> dict[str, Tensor]:
        """Views ``(n, *shape)`` of ``flat`` (default: the buffer) for every trainable tensor, by name.

        One ``split`` rather than a slice per tensor: its backward writes the ``(n, d)`` gradient with one ``cat``
        instead of one zero-filled ``(n, d)`` tensor per parameter tensor (1.6x faster steps for matrix
        factorization on MovieLens 100K, n = 16, 4 tensors, 55,125 parameters, one CPU thread).
        """
        flat = self.flat if flat is None else flat
        chunks = flat.split(self.sizes, dim=1)
        return {
            name: chunk.view(flat.shape[0], *shape)
            for name, shape, chunk in zip(self.names, self.shapes, chunks, strict=True)
        }

    def stacked_buffers(self) -> dict[str, Tensor]:
        """Per-node buffers ``(n, *shape)`` by their name in the template."""
        return {name: getattr(self, self._buffer_key(name)) for name in self.buffer_names}

    def _shared(self) -> dict[str, Tensor]:
        return {name: getattr(self, self._buffer_key(name)) for name in self.frozen_names}

    def node_state(self, node: int) -> dict[str, Tensor]:
        """Node ``node``'s parameters and buffers as a plain ``state_dict`` of the template's layout (views)."""
        state = {name: t[node] for name, t in self.stacked_parameters().items()}
        state.update({name: t[node] for name, t in self.stacked_buffers().items()})
        state.update(self._shared())
        state.update({alias: state[name] for alias, name in self.aliases.items() if name in state})
        return state

    def node_tensors(self, row: int, buffers: dict[str, Tensor] | None = None, rows: Any = None) -> dict[str, Tensor]:
        """Row ``row``'s parameters (views of :attr:`flat`, so gradients reach it) and buffers, by template name."""
        rows = self.flat.unbind(0) if rows is None else rows
        buffers = self.node_buffers() if buffers is None else buffers
        state = {
            name: piece.view(shape) for name, shape, piece in zip(self.names, self.shapes, rows[row].split(self.sizes))
        }
        state.update({name: t[row] for name, t in buffers.items()})
        state.update(self._shared())
        return state

    def call_node(self, row: int, fn: Callable[..., Any], *args: Any, state: dict[str, Tensor] | None = None) -> Any:
        """``fn(template, *args)`` with the template's tensors replaced by row ``row``'s (or by ``state``), in this
        stack's train/eval mode: the way to run any method of a node's model, e.g. a LightningModule's
        ``training_step``. Parameters are views of :attr:`flat`, so a loss returned by ``fn`` back-propagates into
        row ``row``."""
        self._moded_template()
        tensors = self.node_tensors(row) if state is None else state
        return functional_call(self._caller[0], {f"m.{name}": t for name, t in tensors.items()}, (fn, *args))

    def forward(
        self,
        *inputs: Any,
        execution: str = "vmap",
        shared_input: bool = False,
        rows: range | None = None,
        params: Tensor | None = None,
    ) -> Any:
        """Run every replica (or the rows ``rows``) on its own inputs (or all on the same inputs).

        Args:
            *inputs: The model's positional inputs: tensors (or tuples, lists, dicts of tensors) shaped
                ``(c, B, ...)``, one mini-batch per node run (c = n, or ``len(rows)``), or ``(B, ...)`` with
                ``shared_input=True``.
            execution: ``"vmap"`` (one vectorized call) or ``"loop"`` (one call per node).
            shared_input: Feed the same ``(B, ...)`` batch to every node (evaluation on a shared test set).
            rows: A contiguous ``range`` of this stack's rows to run (default: all n), e.g. one chunk of nodes
                whose backward runs before the next chunk's forward. Their buffers are views of the stacked ones
                (a training forward updates them in place).
            params: The ``(c, d)`` parameters to run those rows with (default: the rows of :attr:`flat`), e.g. a
                detached leaf copy-free view ``flat.detach()[rows].requires_grad_()`` whose gradient is taken
                alone. Row j of ``params`` is node ``rows[j]``.

        Returns:
            The model's output with every tensor stacked over the nodes run: ``(c, B, ...)``, row j from node
            ``rows[j]``'s parameters (a tuple or dict output keeps its structure).

        Raises:
            ValueError: If an input tensor does not start with c (without ``shared_input``), ``rows`` is not a
                non-empty step-1 range inside ``[0, n)``, ``params`` is not ``(c, d)``, or ``execution`` is
                unknown.
        """
        if rows is None:
            rows = range(self.num_nodes)
        elif not isinstance(rows, range) or rows.step != 1 or not 0 <= rows.start < rows.stop <= self.num_nodes:
            raise ValueError(f"rows must be a non-empty range(start, stop) inside [0, {self.num_nodes}), got {rows!r}")
        flat = self.flat[rows.start : rows.stop] if params is None else params
        if tuple(flat.shape) != (len(rows), self.num_coordinates):
            raise ValueError(
                f"params must be shaped (len(rows), d) = ({len(rows)}, {self.num_coordinates}), got {tuple(flat.shape)}"
            )
        n = len(rows)
        if not shared_input:
            shapes = tensor_shapes(inputs)
            if not shapes or any(len(shape) < 1 or shape[0] != n for shape in shapes):
                what = f"n = num_nodes = {n}" if n == self.num_nodes else f"n = len(rows) = {n}"
                raise ValueError(
                    f"batch must be shaped (n, B, ...) with {what}, got shape(s) "
                    f"{', '.join(str(shape) for shape in shapes) or 'none (no tensor)'}"
                )
        buffers, shared = self.node_buffers(), self._shared()
        if n < self.num_nodes:
            buffers = {name: t[rows.start : rows.stop] for name, t in buffers.items()}
        template = self._moded_template()
        if execution == "loop":
            # One unbind + one split per node: their backward stacks and concatenates the per-node gradients, O(n d).
            # (Indexing the stacked (n, *shape) views per node would make every node's backward fill an (n, size)
            # zero gradient per tensor: O(n^2 d) per step, measured 7 s at n = 512 for a 4,810-parameter MLP.)
            unbound = flat.unbind(0)
            outs = [
                functional_call(
                    template, self.node_tensors(j, buffers, unbound), inputs if shared_input else select_node(inputs, j)
                )
                for j in range(n)
            ]
            return stack_outputs(outs)
        if execution != "vmap":
            raise ValueError(f"execution must be 'vmap' or 'loop' here, got {execution!r}")

        def call(p: dict[str, Tensor], b: dict[str, Tensor], *x: Any) -> Any:
            return functional_call(template, {**p, **b, **shared}, x)

        in_dims = (0, 0, *((None if shared_input else 0) for _ in inputs))
        return vmap(call, in_dims=in_dims, randomness="different")(self.stacked_parameters(flat), buffers, *inputs)

    def average_state(self) -> dict[str, Tensor]:
        """The averaged model ``x_bar = (1/n) sum_i x_i`` as a template ``state_dict`` of fresh tensors, over all n
        nodes: a collective when this stack holds a shard (see :meth:`shard`).

        Buffers: floating-point ones are averaged over the nodes too (BatchNorm's running mean and variance, as
        ``torch.optim.swa_utils.AveragedModel(use_buffers=True)``); others (e.g. ``num_batches_tracked``) are a copy
        of row 0's. No tensor of the result shares memory with a node's, so running the averaged model never
        changes a node.
        """
        from lightning_mosaic.distributed.sharding import global_row_mean

        mean = global_row_mean(self.flat, self.total_nodes).unsqueeze(0)
        state = {name: t[0] for name, t in self.stacked_parameters(mean).items()}
        for name, t in self.stacked_buffers().items():
            state[name] = global_row_mean(t, self.total_nodes) if t.is_floating_point() else t[0].clone()
        state.update(self._shared())
        return state

    def forward_average(self, *inputs: Any, state: dict[str, Tensor] | None = None) -> Any:
        """Run the averaged model (``state``, default :meth:`average_state`) on ``inputs`` ``(B, ...)``, in this
        stack's train/eval mode."""
        state = self.average_state() if state is None else state
        return functional_call(self._moded_template(), state, inputs)
