"""Pack-aware LSTM/GRU encoders (``lstm``, ``gru``, ``bilstm``, ``bigru``).

Three exact execution strategies give the same results (to float rounding):

``padded_exact`` (``auto`` on CPU for sparse batches, such as random batches of long documents)
    No ``PackedSequence``. Rows are taken longest first and time is cut at the distinct lengths
    of the batch; consecutive cuts are merged into groups of at least ``min_kernel_steps`` steps.
    Each group runs once through the fused RNN kernel (oneDNN on CPU) over the rows still active
    at its start, from the exact state left by the previous group, so (with right padding) every
    real position's output is exact, and rows that end at a group boundary leave with their
    exact final state. For a row that ends *inside* a group, ``h_n`` is its output at
    ``len - 1`` and the LSTM cell state ``c_n`` is recomputed exactly from the known outputs
    (all gates of the group in one matmul, then a few element-wise steps). Positions past a
    row's end are zeroed. Padding is computed only inside a group (a bucketed batch's ragged
    tail), never over the bulk. The reverse direction runs the same way on per-sequence reversed
    inputs (an index ``len - 1 - t`` built from the CPU lengths) and is un-reversed with the same
    index. Multi-layer bidirectional encoders run layer by layer, since each layer needs both
    directions of the one below. All indices come from the CPU lengths: no host-device
    synchronisation.

``packed`` (``auto`` on CUDA, **unmeasured**: see :attr:`RecurrentEncoder.CUDA_RULE_MEASURED`)
    Each layer runs once over a :class:`~torch.nn.utils.rnn.PackedSequence`.

``padded_static`` (``auto`` on CPU for dense, e.g. bucketed, batches; ``auto`` and ``padded_exact``
under ``torch.compile``/``torch.export``)
    No data-dependent Python control flow, so it traces. Each layer is one fused (bidirectional)
    kernel call over the whole right-padded batch, in any row order, with one extra input
    feature equal to 1 at padded positions whose weights saturate gates exactly (LSTM: forget
    gate 1, input gate 0; GRU: update gate 1), with margin over a bound computed from the
    weights. The forward direction reads real tokens first (exact outputs; ``h_n`` gathered at
    ``len - 1``; the LSTM cell state is frozen over the padding, so ``c_n`` is exact). The
    reverse direction reads the padding first and stays exactly at the zero state there, so it
    enters each row's real tokens exactly as if the row ran alone. Saturated gates have zero
    derivative: the padding contributes nothing to gradients. Exact to float rounding, like the
    others (see :meth:`RecurrentEncoder._run_static`). Value checks on lengths/masks are skipped
    while tracing (see :func:`~seqbucket_plugin.encoders.resolve_lengths`).

    What PyTorch (2.13, CPU) then does with it: inductor forward+backward works for LSTM and
    GRU, but PyTorch's lowering of ``aten.lstm``/``aten.gru`` for training unrolls the
    recurrence over time, so a compiled graph is specialised to the padded length T (the batch
    size stays dynamic with ``dynamic=True``; compile time grows with T). LSTM inference
    (eval/no_grad) lowers to one oneDNN layer and is dynamic in B and T; GRU inference is
    unrolled too. ``torch.export`` (eval) works with a dynamic batch size, but export also
    unrolls (``nn.LSTM`` alike), so T is fixed to the example's: pad batches to the exported T
    (padding is exact). ``packed`` does not trace (an explicit ``strategy="packed"`` is kept).

The weights are stored under ``nn.LSTM``/``nn.GRU`` names (``weight_ih_l0``,
``weight_hh_l0_reverse``...), so a ``state_dict`` moves between this encoder and
``nn.LSTM``/``nn.GRU`` (``batch_first`` is irrelevant to weights) in both directions.
"""

from __future__ import annotations

import bisect
import contextlib
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import _VF, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from seqbucket_plugin.encoders.base import EncoderOutput, SequenceEncoder, to_device_index
from seqbucket_plugin.encoders.errors import EncoderInputError
from seqbucket_plugin.encoders.registry import register_encoder

_CUDNN_CHUNK_WARNING = ".*weights are not part of single contiguous chunk of memory.*"
_FREEZE_MARGIN = 1000.0  # padded_static: how far past the bound the frozen gates' pre-activations lie


def _check_p(name: str, p: float) -> float:
    p = float(p)
    if not 0.0 <= p < 1.0:
        raise EncoderInputError(f"{name} must be in [0, 1), got {p}")
    return p


class RecurrentEncoder(SequenceEncoder):
    """A multi-layer (bi)LSTM/GRU encoder honouring the encoder contract (see module docs).

    Args:
        input_size: size of the input vectors.
        hidden_size: hidden size per direction.
        num_layers: number of stacked layers.
        mode: ``"lstm"`` or ``"gru"``.
        bidirectional: add a backward direction (token states are ``[forward; backward]``).
        dropout: dropout on the outputs of every layer but the last (between layers).
        input_dropout: dropout on the input vectors.
        output_dropout: dropout on the returned token states (pooling sees the dropped states).
        variational: the three dropouts above are *locked* (one mask per sequence, shared by
            all time steps, as in AWD-LSTM) when True, element-wise when False.
        weight_drop: DropConnect probability on the recurrent weights ``weight_hh`` (one mask
            per forward, training only; AWD-LSTM style).
        forget_bias: initial forget-gate bias of LSTMs (the two bias vectors sum to it).
        pooling: see :class:`~seqbucket_plugin.encoders.Pooler`.
        strategy: ``"auto"`` (see :meth:`choose_strategy`: on the CPU ``padded_static`` for
            batches at least :attr:`static_min_density` real tokens, else ``padded_exact``; on
            CUDA the same rule with :attr:`cuda_dense_strategy`, :attr:`cuda_sparse_strategy` and
            :attr:`cuda_static_min_density`, today ``packed`` for every batch, an unmeasured
            choice; ``padded_static`` while compiling/exporting), ``"packed"``,
            ``"padded_exact"`` (run as ``padded_static`` while compiling/exporting) or
            ``"padded_static"``; a per-call ``strategy=`` overrides it.
        min_kernel_steps: in ``padded_exact``, the shortest run of time steps given to one kernel
            call (shorter length segments are merged).
    """

    strategies = ("padded_exact", "packed", "padded_static")
    #: ``auto`` off CUDA runs ``padded_static`` on batches whose real tokens fill at least this
    #: share of ``B x T`` (see :meth:`choose_strategy`). On a 2-core x86 CPU the two strategies
    #: cross between 0.6 and 0.8 (``python benchmarks/bench_encoders.py --crossover``).
    static_min_density: float = 0.75
    #: ``auto`` on CUDA: ``cuda_dense_strategy`` for batches whose real tokens fill at least
    #: ``cuda_static_min_density`` of ``B x T``, else ``cuda_sparse_strategy``. **Not measured on
    #: a GPU yet** (``CUDA_RULE_MEASURED = False``): ``packed`` for both assumes cuDNN's packed
    #: kernels win, and there is evidence against it (PyTorch issue #149194: LSTMs 5-100x slower
    #: on ``PackedSequence``; cuDNN's persistent kernels serve padded input only).
    #: ``python benchmarks/gpu_check.py`` measures the three strategies on bucketed and random
    #: batches and a density sweep, and prints the values its measurements support.
    cuda_dense_strategy: str = "packed"
    cuda_sparse_strategy: str = "packed"
    cuda_static_min_density: float = 0.75
    CUDA_RULE_MEASURED: bool = False

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        *,
        mode: str = "lstm",
        bidirectional: bool = False,
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        output_dropout: float = 0.0,
        variational: bool = True,
        weight_drop: float = 0.0,
        forget_bias: float = 1.0,
        pooling: str | Sequence[str] | None = "last",
        strategy: str = "auto",
        min_kernel_steps: int = 16,
    ):
        mode = mode.lower()
        if mode not in ("lstm", "gru"):
            raise EncoderInputError(f"mode must be 'lstm' or 'gru', got {mode!r}")
        if int(input_size) < 1 or int(hidden_size) < 1 or int(num_layers) < 1:
            raise EncoderInputError("input_size, hidden_size and num_layers must be positive")
        dirs = 2 if bidirectional else 1
        super().__init__(hidden_size * dirs, dirs, pooling, strategy)
        self.input_size = int(input_size)
        self.hidden_size = int(hidden_size)
        self.num_layers = int(num_layers)
        self.mode = mode
        self.bidirectional = bool(bidirectional)
        self.dropout = _check_p("dropout", dropout)
        self.input_dropout = _check_p("input_dropout", input_dropout)
        self.output_dropout = _check_p("output_dropout", output_dropout)
        self.weight_drop = _check_p("weight_drop", weight_drop)
        self.variational = bool(variational)
        self.forget_bias = float(forget_bias)
        self.min_kernel_steps = max(1, int(min_kernel_steps))
        gates = 4 if mode == "lstm" else 3
        self._names: list[list[tuple[str, str, str, str]]] = []
        for layer in range(self.num_layers):
            layer_in = self.input_size if layer == 0 else self.output_size
            per_dir = []
            for d in range(dirs):
                sfx = f"_l{layer}" + ("_reverse" if d else "")
                names = (f"weight_ih{sfx}", f"weight_hh{sfx}", f"bias_ih{sfx}", f"bias_hh{sfx}")
                shapes = ((gates * hidden_size, layer_in), (gates * hidden_size, hidden_size),
                          (gates * hidden_size,), (gates * hidden_size,))
                for n, s in zip(names, shapes):
                    self.register_parameter(n, nn.Parameter(torch.empty(s)))
                per_dir.append(names)
            self._names.append(per_dir)
        self.reset_parameters()

    # ------------------------------------------------------------------ parameters
    def reset_parameters(self) -> None:
        """Xavier input weights, orthogonal recurrent weights (per gate), forget-gate bias."""
        H = self.hidden_size
        with torch.no_grad():
            for per_dir in self._names:
                for w_ih, w_hh, b_ih, b_hh in per_dir:
                    w_ih, w_hh = getattr(self, w_ih), getattr(self, w_hh)
                    b_ih, b_hh = getattr(self, b_ih), getattr(self, b_hh)
                    for g in range(w_ih.size(0) // H):
                        nn.init.xavier_uniform_(w_ih[g * H:(g + 1) * H])
                        nn.init.orthogonal_(w_hh[g * H:(g + 1) * H])
                    b_ih.zero_()
                    b_hh.zero_()
                    if self.mode == "lstm":
                        b_ih[H:2 * H].fill_(self.forget_bias)  # gate order i, f, g, o

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, mode={self.mode!r}, "
                f"bidirectional={self.bidirectional}, dropout={self.dropout}, input_dropout={self.input_dropout}, "
                f"output_dropout={self.output_dropout}, weight_drop={self.weight_drop}, strategy={self.strategy!r}")

    def _weights(self) -> list[list[list[torch.Tensor]]]:
        """Per layer, per direction ``[w_ih, w_hh, b_ih, b_hh]``, weight-dropped when training."""
        out = []
        for per_dir in self._names:
            layer = []
            for names in per_dir:
                w = [getattr(self, n) for n in names]
                if self.training and self.weight_drop > 0:
                    w[1] = F.dropout(w[1], p=self.weight_drop, training=True)
                layer.append(w)
            out.append(layer)
        return out

    # ------------------------------------------------------------------ dropout helpers
    def _dropout_mask(self, rows: int, size: int, p: float, like: torch.Tensor) -> torch.Tensor | None:
        if not self.training or p == 0 or not self.variational:
            return None
        return like.new_empty(rows, size).bernoulli_(1 - p).div_(1 - p)

    def _apply_dropout(self, x: torch.Tensor, p: float, mask: torch.Tensor | None) -> torch.Tensor:
        """Dropout on padded ``(B, T, F)``: locked with ``mask (B, F)``, else element-wise."""
        if not self.training or p == 0:
            return x
        if mask is not None:
            return x * mask.unsqueeze(1)
        return F.dropout(x, p=p, training=True)

    # ------------------------------------------------------------------ contract
    def default_strategy(self, device: torch.device) -> str:
        if torch.compiler.is_compiling():  # torch.compile and torch.export
            return "padded_static"
        return self.cuda_sparse_strategy if device.type == "cuda" else "padded_exact"

    def resolve_strategy(self, strategy: str | None, device: torch.device) -> str:
        chosen = super().resolve_strategy(strategy, device)
        if chosen == "padded_exact" and torch.compiler.is_compiling():
            # the length-driven plan of padded_exact cannot be traced; padded_static computes the
            # same exact results without data-dependent control flow
            return "padded_static"
        return chosen

    def choose_strategy(self, strategy: str | None, x: torch.Tensor, lengths: torch.Tensor) -> str:
        """``auto``: a dense batch's strategy or a sparse batch's, by the share of real tokens.

        Dense means at least :attr:`static_min_density` (CUDA: :attr:`cuda_static_min_density`)
        of the ``B x T`` positions are real tokens. Off CUDA a dense batch runs
        ``padded_static`` (one fused kernel call per layer over the padding costs less than
        ``padded_exact``'s per-length groups, reversal gathers and cell-state recomputation) and
        a sparse one ``padded_exact`` (random batches of long documents: skipping the padding
        wins); measured on a 2-core CPU. On CUDA: :attr:`cuda_dense_strategy` /
        :attr:`cuda_sparse_strategy`, ``packed`` for both until measured (see
        :attr:`CUDA_RULE_MEASURED`). Reads the CPU lengths only (no synchronisation).
        """
        chosen = self.resolve_strategy(strategy, x.device)
        if (strategy or self.strategy) != "auto" or torch.compiler.is_compiling():
            return chosen
        if x.device.type == "cuda":
            dense, sparse, threshold = self.cuda_dense_strategy, self.cuda_sparse_strategy, self.cuda_static_min_density
        else:
            dense, sparse, threshold = "padded_static", "padded_exact", self.static_min_density
        positions = x.size(0) * x.size(1)
        if positions and int(lengths.sum()) >= threshold * positions:
            return dense
        return sparse

    def encode(self, x, lengths, mask, strategy):
        B, T, _ = x.shape
        if x.size(-1) != self.input_size:
            raise EncoderInputError(f"expected input size {self.input_size}, got {x.size(-1)}")
        device = x.device
        weights = self._weights()
        x = self._apply_dropout(x, self.input_dropout, self._dropout_mask(B, self.input_size, self.input_dropout, x))
        if strategy == "padded_static":
            return self._encode_static(x, lengths, mask, weights)
        lens = lengths.tolist()  # CPU tensor: no synchronisation
        is_sorted = all(a >= b for a, b in zip(lens, lens[1:]))
        inv = None
        if not is_sorted:
            _, perm = torch.sort(lengths, descending=True, stable=True)
            inv = torch.empty_like(perm)
            inv[perm] = torch.arange(B)
            x = x.index_select(0, to_device_index(perm, device))
            lens = [lens[i] for i in perm.tolist()]
        n0 = bisect.bisect_left([-v for v in lens], 0)  # rows with length > 0 (sorted descending)
        if n0 == 0:
            states, finals = self._empty(x, B, T)
        else:
            between = [self._dropout_mask(B, self.output_size, self.dropout, x) for _ in range(self.num_layers - 1)]
            run = self._run_packed if strategy == "packed" else self._run_padded
            states, finals = run(x[:n0, : lens[0]], lens[:n0], weights, between)
            states = F.pad(states, (0, 0, 0, T - lens[0], 0, B - n0))
            finals = [F.pad(f, (0, 0, 0, B - n0)) for f in finals]
        if inv is not None:
            inv_dev = to_device_index(inv, device)
            states = states.index_select(0, inv_dev)
            finals = [f.index_select(1, inv_dev) for f in finals]
        states = self._apply_dropout(
            states, self.output_dropout, self._dropout_mask(B, self.output_size, self.output_dropout, states)
        )
        final = (finals[0], finals[1]) if self.mode == "lstm" else finals[0]
        return states, final

    def _empty(self, x, B, T):
        n = self.num_layers * self.num_directions
        z = x.new_zeros(n, B, self.hidden_size)
        # keep the graph connected to the parameters, so backward() on an all-empty batch works
        anchor = sum(p.sum() for p in self.parameters()) * 0
        states = x.new_zeros(B, T, self.output_size) + anchor
        return states, [z + anchor] * (2 if self.mode == "lstm" else 1)

    # ------------------------------------------------------------------ truncated BPTT
    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> torch.Tensor | tuple:
        """The zero state of :meth:`encode_chunk`: ``(num_layers * num_directions, batch_size,
        hidden_size)`` float32 zeros, an ``(h, c)`` pair for LSTMs (``nn.LSTM``'s ``hx`` layout)."""
        h = torch.zeros(self.num_layers * self.num_directions, batch_size, self.hidden_size, device=device)
        return (h, torch.zeros_like(h)) if self.mode == "lstm" else h

    def encode_chunk(self, x: torch.Tensor, lengths: torch.Tensor, state: torch.Tensor | tuple) -> EncoderOutput:
        """Run one chunk of truncated back-propagation through time from ``state``.

        ``x (B, T, D)`` right-padded, rows sorted by length (longest first), every length > 0;
        ``lengths (B,)`` CPU; ``state``: the state entering the chunk, in the layout of
        :meth:`initial_state` (the previous chunk's ``final``, detached, for these rows). Only
        the forward directions carry over: a backward direction starts from zero in every chunk,
        since it cannot see past the cut. Returns the chunk's :class:`EncoderOutput` (``final`` is
        the state to carry into the next chunk).

        The layers run as one ``nn.LSTM``/``nn.GRU`` call over a ``PackedSequence`` with this
        encoder's weights and element-wise ``dropout`` between layers (training only); the
        input, output and weight dropouts and the execution strategies are not used.
        """
        device = x.device
        dirs, L = self.num_directions, self.num_layers
        forward_only = torch.tensor([1.0 if d == 0 else 0.0 for _ in range(L) for d in range(dirs)],
                                    device=device).view(-1, 1, 1)
        lstm = self.mode == "lstm"
        hx = (state[0] * forward_only, state[1] * forward_only) if lstm else state * forward_only
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=True)
        flat = [getattr(self, name) for per_dir in self._names for names in per_dir for name in names]
        quiet = warnings.catch_warnings() if x.is_cuda else contextlib.nullcontext()
        with quiet:
            if x.is_cuda:
                warnings.filterwarnings("ignore", message=_CUDNN_CHUNK_WARNING)
            run = _VF.lstm if lstm else _VF.gru
            data, *final = run(packed.data, packed.batch_sizes, hx, flat, True, L, self.dropout, self.training,
                               self.bidirectional)
        states, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes), batch_first=True,
                                        total_length=x.shape[1])
        mask = torch.arange(x.shape[1], device=device).unsqueeze(0) < lengths.to(device).unsqueeze(1)
        pooled = self.pooler(states, mask, lengths)
        return EncoderOutput(states, pooled, tuple(final) if lstm else final[0], lengths, mask)

    # ------------------------------------------------------------------ padded_exact
    @staticmethod
    def _plan(lens: list[int]) -> list[tuple[int, int, int]]:
        """Segments ``(start, end, active_rows)`` cut at the distinct lengths (lens sorted desc)."""
        neg = [-v for v in lens]
        plan, start = [], 0
        for end in sorted(set(lens)):
            plan.append((start, end, bisect.bisect_right(neg, -end)))  # rows with length >= end
            start = end
        return plan

    def _kernel(self, x, state, w):
        """Fused RNN over time-major ``x (s, n, D)`` from ``state`` (each ``(n, H)``)."""
        if self.mode == "lstm":
            out, h, c = _VF.lstm(x, (state[0].unsqueeze(0), state[1].unsqueeze(0)), w, True, 1, 0.0,
                                 self.training, False, False)
            return out, (h.squeeze(0), c.squeeze(0))
        out, h = _VF.gru(x, state[0].unsqueeze(0), w, True, 1, 0.0, self.training, False, False)
        return out, (h.squeeze(0),)

    @staticmethod
    def _lstm_cells_c(x, h_prev, c0, w):
        """Exact cell states of an LSTM whose hidden outputs are known.

        Time-major ``x (s, r, D)`` inputs, ``h_prev (s, r, H)`` the hidden state *entering* each
        step, ``c0 (r, H)`` the cell state entering the first step. Returns ``(s, r, H)`` cell
        states. The gates of all steps come from one matmul; only the cheap element-wise
        recurrence runs step by step.
        """
        w_ih, w_hh, b_ih, b_hh = w
        gates = torch.matmul(x, w_ih.t()) + torch.matmul(h_prev, w_hh.t()) + (b_ih + b_hh)
        i, f, g, _ = gates.chunk(4, dim=-1)
        ig = torch.sigmoid(i) * torch.tanh(g)
        f = torch.sigmoid(f)
        c, cs = c0, []
        for j in range(x.size(0)):
            c = torch.addcmul(ig[j], f[j], c)
            cs.append(c)
        return torch.stack(cs, 0)

    @staticmethod
    def _groups(plan: list[tuple[int, int, int]], min_steps: int) -> list[tuple[int, int, int, int]]:
        """Merge consecutive segments until a group spans >= min_steps steps.

        Returns ``(start, end, active_rows_at_start, active_rows_at_end)``.
        """
        groups, cur = [], None
        for start, end, n in plan:
            if cur is None:
                cur = [start, end, n, n]
            else:
                cur[1], cur[3] = end, n
            if cur[1] - cur[0] >= min_steps:
                groups.append(tuple(cur))
                cur = None
        if cur is not None:
            groups.append(tuple(cur))
        return groups

    def _run_direction(self, x, lens, groups, mask, w):
        """One direction over time-major ``x (T, n0, D)`` (rows sorted by length, descending).

        Each group of segments runs through the fused kernel over the rows active at its start,
        from the exact state of the previous group. Rows that end inside a group take their final
        hidden state from the outputs at ``len - 1``; their LSTM cell state is recomputed exactly
        from those outputs (:meth:`_lstm_cells_c`). Outputs are zero at padded positions.
        """
        n0, H = x.size(1), self.hidden_size
        lstm = self.mode == "lstm"
        state = tuple(x.new_zeros(n0, H) for _ in range(2 if lstm else 1))
        outs, done = [], []
        for gi, (start, end, n, n_end) in enumerate(groups):
            xs = x[start:end, :n]
            out, new_state = self._kernel(xs, state, w)
            if n_end < n:  # rows n_end..n-1 end strictly inside this group
                pos = torch.tensor([lens[r] - 1 - start for r in range(n_end, n)])
                pos_dev = to_device_index(pos, x.device).view(1, -1, 1).expand(1, -1, H)
                rows = out[:, n_end:n]
                h_fin = rows.gather(0, pos_dev).squeeze(0)
                fin = (h_fin,)
                if lstm:
                    s = int(pos.max()) + 1
                    h_prev = torch.cat([state[0][n_end:n].unsqueeze(0), rows[: s - 1]], 0)
                    cs = self._lstm_cells_c(xs[:s, n_end:n], h_prev, state[1][n_end:n], w)
                    fin = (h_fin, cs.gather(0, pos_dev).squeeze(0))
                done.append(fin)
                new_state = tuple(t[:n_end] for t in new_state)
                out = out * mask[start:end, :n]  # the kernel ran past those rows' ends
            state = new_state
            outs.append(out if n == n0 else F.pad(out, (0, 0, 0, n0 - n)))
            # rows that end exactly at `end` leave here with an exact state
            n_next = groups[gi + 1][2] if gi + 1 < len(groups) else 0
            if n_next < n_end:
                done.append(tuple(t[n_next:n_end] for t in state))
                state = tuple(t[:n_next] for t in state)
        out = outs[0] if len(outs) == 1 else torch.cat(outs, 0)
        finals = [torch.cat([d[k] for d in reversed(done)], 0) for k in range(len(state))]
        return out, finals

    def _run_padded(self, x, lens, weights, between):
        """``x (n0, T, D)`` batch-first, sorted, every row non-empty; runs time-major inside."""
        n0, T = x.size(0), x.size(1)
        groups = self._groups(self._plan(lens), self.min_kernel_steps)
        lens_t = torch.tensor(lens)
        t = torch.arange(T).unsqueeze(1)  # (T, 1)
        L = lens_t.unsqueeze(0)  # (1, n0)
        mask = to_device_index(t < L, x.device).to(x.dtype).unsqueeze(-1)  # (T, n0, 1)
        rev = None
        if self.bidirectional:
            # time-major flat index of the per-sequence reversal (an involution: also un-reverses)
            src = torch.where(t < L, L - 1 - t, t) * n0 + torch.arange(n0).unsqueeze(0)
            rev = to_device_index(src.reshape(-1), x.device)
        finals: list[list[torch.Tensor]] = [[], []]
        inp = x.transpose(0, 1).contiguous()
        for layer, per_dir in enumerate(weights):
            outs = []
            for d, w in enumerate(per_dir):
                if d == 0:
                    out, fin = self._run_direction(inp, lens, groups, mask, w)
                else:
                    xr = inp.reshape(T * n0, -1).index_select(0, rev).view(T, n0, -1)
                    out, fin = self._run_direction(xr, lens, groups, mask, w)
                    out = out.reshape(T * n0, -1).index_select(0, rev).view(T, n0, -1)
                outs.append(out)
                for k, f in enumerate(fin):
                    finals[k].append(f)
            inp = outs[0] if len(outs) == 1 else torch.cat(outs, -1)
            if layer < self.num_layers - 1 and self.training and self.dropout > 0:
                m = between[layer]
                inp = F.dropout(inp, p=self.dropout, training=True) if m is None else inp * m[:n0].unsqueeze(0)
        return inp.transpose(0, 1), [torch.stack(f, 0) for f in finals if f]

    # ------------------------------------------------------------------ padded_static
    def _encode_static(self, x, lengths, mask, weights):
        """:meth:`encode` for ``padded_static``: no Python control flow on the lengths' values."""
        B, T, _ = x.shape
        between = [self._dropout_mask(B, self.output_size, self.dropout, x) for _ in range(self.num_layers - 1)]
        if B == 0 or T == 0:  # shapes only (the kernels reject empty inputs)
            states, finals = self._empty(x, B, T)
        else:
            if any(m is not None for m in between):
                # the other strategies apply locked between-layer masks to the rows sorted by
                # length (longest first, stable): the same rows get the same masks here
                perm = torch.sort(lengths, descending=True, stable=True)[1]
                inv = to_device_index(torch.argsort(perm), x.device)
                between = [m.index_select(0, inv) for m in between]
            states, finals = self._run_static(x, lengths, mask, weights, between)
        states = self._apply_dropout(
            states, self.output_dropout, self._dropout_mask(B, self.output_size, self.output_dropout, states)
        )
        final = (finals[0], finals[1]) if self.mode == "lstm" else finals[0]
        return states, final

    def _frozen_weights(self, w: list[torch.Tensor]) -> list[torch.Tensor]:
        """``[w_ih | pad column, w_hh, b_ih, b_hh]``: the weights of the extra "padding" input.

        At a padded position every input feature is 0 and the padding feature is 1, so the gate
        pre-activations are ``column + w_hh h + b_ih + b_hh``. With ``|h| <= 1`` (true for LSTM
        and GRU outputs from a zero state) the last two terms are bounded by
        ``bound = max_rows(sum |w_hh| + |b_ih + b_hh|)``, so a column of ``+-(bound + 1000)``
        saturates the gates it touches exactly: LSTM forget gate ``sigmoid = 1``, input gate
        ``sigmoid = 0`` (``c' = 1 * c + 0 * g = c`` bit for bit); GRU update gate ``z = 1``
        (``h' = z * h + (1 - z) * n = h`` when ``h = 0``, the only case relied on). The saturated
        gates also have exactly zero derivative, so padded steps add nothing to any gradient.
        At real positions the extra feature is 0 and the column contributes exactly nothing.
        """
        w_ih, w_hh, b_ih, b_hh = w
        H = self.hidden_size
        bound = w_hh.detach().abs().sum(1) + (b_ih.detach() + b_hh.detach()).abs()
        big = bound.amax() + _FREEZE_MARGIN
        # LSTM gates (i, f, g, o): i -> -big, f -> +big. GRU gates (r, z, n): z -> +big.
        sign = (-1.0, 1.0, 0.0, 0.0) if self.mode == "lstm" else (0.0, 1.0, 0.0)
        col = torch.tensor(sign, dtype=w_ih.dtype, device=w_ih.device).repeat_interleave(H) * big
        return [torch.cat([w_ih, col.unsqueeze(1)], 1), w_hh, b_ih, b_hh]

    def _run_static(self, x, lengths, mask, weights, between):
        """``x (B, T, D)`` right-padded, any row order, empty rows allowed: one fused call per layer.

        Each layer is a single (bidirectional) fused kernel call over the whole padded batch,
        given one extra input feature that is 1 at padded positions (:meth:`_frozen_weights`).

        * forward direction: real positions come first, so their outputs are exact; ``h_n`` is
          the output at ``len - 1`` (gathered); an LSTM's cell state is frozen over the padding,
          so the kernel's ``c_n`` is the cell state at ``len - 1``, exactly;
        * reverse direction: the kernel reads the padding first; from the zero initial state
          the frozen gates keep ``(h, c) = (0, 0)`` exactly (LSTM: ``c = 1 * 0 + 0 * g = 0``,
          ``h = o * tanh(0) = 0``; GRU: ``h = 1 * 0 + 0 * n = 0``), so every row enters its real
          tokens from the exact zero state, as if run alone; the kernel's final states are exact.

        Padded positions of the outputs are zeroed; final states of empty rows are zero.
        """
        B, T, _ = x.shape
        H = self.hidden_size
        lstm = self.mode == "lstm"
        m = mask.unsqueeze(-1)  # (B, T, 1) bool on x's device
        freeze = lstm or self.bidirectional  # a unidirectional GRU needs no frozen state
        compiling = torch.compiler.is_compiling()
        lens = lengths.to(x.device)
        last = (lens - 1).clamp(min=0).view(B, 1, 1).expand(B, 1, H)
        nonempty = (lens > 0).to(x.dtype).view(1, B, 1)
        pad = (~m).to(x.dtype)
        h0 = x.new_zeros(self.num_directions, B, H)
        inp = torch.where(m, x, 0.0)  # the padding may hold anything (even NaN)
        hs, cs = [], []
        for layer, per_dir in enumerate(weights):
            flat = [t for w in per_dir for t in (self._frozen_weights(w) if freeze else w)]
            xin = torch.cat([inp, pad], -1) if freeze else inp
            if compiling and torch.is_grad_enabled() and not xin.requires_grad and flat[0].requires_grad:
                # PyTorch's compile-time LSTM decomposition picks an inference-only oneDNN layer
                # when the input needs no gradient, which breaks backward (to the weights) under
                # inductor; adding an exact 0 that requires grad selects the trainable lowering
                xin = xin + flat[0][:0].sum()
            if lstm:
                out, h, c = _VF.lstm(xin, (h0, h0), flat, True, 1, 0.0, self.training, self.bidirectional, True)
                cs.append(c)
            else:
                out, h = _VF.gru(xin, h0, flat, True, 1, 0.0, self.training, self.bidirectional, True)
            out = torch.where(m, out, 0.0)
            hs.append(out[..., :H].gather(1, last).transpose(0, 1))  # forward h_n: output at len - 1
            if self.bidirectional:
                hs.append(h[1:])  # reverse h_n: the kernel's (exact) final state
            inp = out
            if layer < self.num_layers - 1 and self.training and self.dropout > 0:
                mk = between[layer]
                inp = F.dropout(inp, p=self.dropout, training=True) if mk is None else inp * mk.unsqueeze(1)
        finals = [torch.cat(hs, 0) * nonempty]
        if lstm:
            finals.append(torch.cat(cs, 0) * nonempty)
        return inp, finals

    # ------------------------------------------------------------------ packed
    def _run_packed(self, x, lens, weights, between):
        n0, H = x.size(0), self.hidden_size
        packed = pack_padded_sequence(x, torch.tensor(lens), batch_first=True, enforce_sorted=True)
        data, batch_sizes = packed.data, packed.batch_sizes
        dirs = self.num_directions
        row_seq = None
        quiet = warnings.catch_warnings() if x.is_cuda else contextlib.nullcontext()
        finals: list[list[torch.Tensor]] = [[], []]
        with quiet:
            if x.is_cuda:
                warnings.filterwarnings("ignore", message=_CUDNN_CHUNK_WARNING)
            for layer, per_dir in enumerate(weights):
                flat = [t for w in per_dir for t in w]
                h0 = data.new_zeros(dirs, n0, H)
                if self.mode == "lstm":
                    data, h, c = _VF.lstm(data, batch_sizes, (h0, h0), flat, True, 1, 0.0, self.training,
                                          self.bidirectional)
                    finals[0].append(h)
                    finals[1].append(c)
                else:
                    data, h = _VF.gru(data, batch_sizes, h0, flat, True, 1, 0.0, self.training, self.bidirectional)
                    finals[0].append(h)
                if layer < self.num_layers - 1 and self.training and self.dropout > 0:
                    m = between[layer]
                    if m is None:
                        data = F.dropout(data, p=self.dropout, training=True)
                    else:
                        if row_seq is None:  # packed row -> sorted sequence index
                            row_seq = to_device_index(
                                torch.cat([torch.arange(int(b)) for b in batch_sizes]), x.device
                            )
                        data = data * m[:n0].index_select(0, row_seq)
        out, _ = pad_packed_sequence(PackedSequence(data, batch_sizes), batch_first=True, total_length=x.size(1))
        return out, [torch.cat(f, 0) for f in finals if f]


def _factory(mode: str, bidirectional: bool):
    def make(input_size: int, hidden_size: int, num_layers: int = 1, **kwargs) -> RecurrentEncoder:
        return RecurrentEncoder(input_size, hidden_size, num_layers, mode=mode, bidirectional=bidirectional, **kwargs)

    make.__name__ = f"{'bi' if bidirectional else ''}{mode}"
    # the constructor options seqbucket_plugin.testing.check_encoder also checks
    make.contract_configs = ({}, {"num_layers": 2}, {"num_layers": 3, "min_kernel_steps": 1},  # type: ignore[attr-defined]
                             {"num_layers": 2, "min_kernel_steps": 100})
    make.__doc__ = (f"A {'bidirectional ' if bidirectional else ''}{mode.upper()} "
                    "RecurrentEncoder; see RecurrentEncoder for the keyword arguments.")
    return make


register_encoder("lstm", _factory("lstm", False))
register_encoder("gru", _factory("gru", False))
register_encoder("bilstm", _factory("lstm", True), aliases=("blstm", "bi-lstm"))
register_encoder("bigru", _factory("gru", True), aliases=("bi-gru",))
