"""What tests and benchmarks share: the tolerance table, torch's own twin of a module, and random
arguments for one layer's ops (``layer_args``, ``run_layer``)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkernels.modules import GRU, LSTM, RNN, IndRNN, rnn_config

# (atol, rtol) against torch / the oracle, per dtype (per ("autocast", dtype): see there). fp32 is
# the parity bar of docs/design.md §6: 5e-5 absolute; the 1e-6 relative term (8 ulps) only
# matters for values beyond ~50, where 5e-5 is a few ulps and summation order alone exceeds it
# (exploding relu IndRNN states, large sums).
TOLERANCES: dict[torch.dtype | tuple[str, torch.dtype], tuple[float, float]] = {
    torch.float64: (1e-10, 1e-10),
    torch.float32: (5e-5, 1e-6),
    # fp16 / bf16 (GPU tests; fp16 also in the interpreter): a run in that dtype against an fp32
    # reference on the same rounded inputs, the reference rounded to the dtype for the comparison.
    # Kernels accumulate in fp32 but keep states, gates and outputs in the dtype, so each step adds
    # about one rounding (eps = 2**-11 fp16, 2**-8 bf16) of values of order 1. Measured in the
    # interpreter (fp16 LSTM and GRU modules, T = 6..40): errors up to 1e-3 of a tensor's largest
    # element, under 5% of the fp16 bar; bf16 has 8x fp16's eps.
    torch.float16: (1e-2, 1e-2),
    torch.bfloat16: (5e-2, 5e-2),
    # An fp32 model under torch.autocast(dtype) against torch's own run under the same autocast
    # (tests/test_autocast.py), outputs, final states and every gradient, compared in fp32. The
    # two round differently: ours the input GEMM (its bias folded in) to the dtype, then an fp32
    # recurrence and the outputs; torch's oneDNN LSTM everything, its GRU every step's GEMMs. The
    # differences are those of torch's own autocast run against its fp32 run. Measured on
    # tests/test_autocast.py's shapes (T=7 B=3 I=4 H=6; one layer and two bidirectional layers,
    # padded and packed, 10 seeds, every cell, IndRNN tanh; cpp and reference, which the other
    # backends match to the fp32 bar): largest max |a - b| / (1 + |b|) 4.9e-2 in bf16 (IndRNN's
    # gradients; LSTM / GRU 4.1e-2; outputs 1.1e-2), 9.0e-3 in fp16; the bars are twice those.
    ("autocast", torch.bfloat16): (1e-1, 1e-1),
    ("autocast", torch.float16): (2e-2, 2e-2),
    # A model converted to the dtype on CPU (cpp on every GEMM path, numba; tests/test_half.py),
    # outputs, final states and every gradient, compared in fp64: ("half", dtype) against an fp64
    # run on the same rounded weights, inputs and cotangents; ("torch", dtype) against torch's
    # own module in the dtype (nn.LSTM / nn.GRU on CPU, IndRNN the eager loop). Measured as
    # max |a - b| / (1 + |b|) on tests/test_half.py's shapes (T=9 B=3 I=5 H=7 P=3; 1-2 layers,
    # bidirectional or not, padded and packed, 3 seeds, every cell): bf16 3.9e-3 (outputs) and
    # 3.1e-2 (gradients: the bf16 tensors between ops, d_gx and a lower layer's y, round as
    # torch's do) against fp64, 8.1e-3 / 4.7e-2 against torch; fp16 6.0e-4 / 4.9e-3 against
    # fp64, 7.7e-4 / 7.6e-3 against torch. The bars are about twice those.
    ("half", torch.bfloat16): (6e-2, 6e-2),
    ("half", torch.float16): (1e-2, 1e-2),
    ("torch", torch.bfloat16): (1e-1, 1e-1),
    ("torch", torch.float16): (1.5e-2, 1.5e-2),
}


def torch_twin(module: LSTM | GRU | RNN | IndRNN) -> nn.Module:
    """torch's own implementation of ``module`` with a copy of its weights: ``nn.LSTM`` /
    ``nn.GRU`` / ``nn.RNN`` (cuDNN on GPU, torch's CPU path on CPU), or for IndRNN an eager torch
    loop (which shares the module's parameters)."""
    if isinstance(module, IndRNN):
        return EagerIndRNN(module)
    weight = module.weight_ih_l0
    config = dict(rnn_config(module), device=weight.device, dtype=weight.dtype)
    if isinstance(module, LSTM):
        twin = nn.LSTM(proj_size=module.proj_size, **config)
    elif isinstance(module, RNN):
        twin = nn.RNN(nonlinearity=module.nonlinearity, **config)
    else:
        twin = nn.GRU(**config)
    twin.load_state_dict(module.state_dict())
    return twin.train(module.training)


class EagerIndRNN(nn.Module):
    """IndRNN as a plain eager torch loop with autograd (written independently of the ops), the
    baseline torch users would write. Shares the parameters of the module it wraps."""

    def __init__(self, module: IndRNN) -> None:
        super().__init__()
        self.module = module

    def forward(self, input: Tensor, hx: Tensor | None = None) -> tuple[Tensor, Tensor]:
        m = self.module
        if isinstance(input, PackedSequence):
            raise TypeError("EagerIndRNN takes padded input only")
        x = input.transpose(0, 1) if m.batch_first else input
        B = x.shape[1]
        D = m.num_directions
        if hx is None:
            hx = x.new_zeros(m.num_layers * D, B, m.hidden_size)
        act = torch.relu if m.nonlinearity == "relu" else torch.tanh
        finals = []
        for layer in range(m.num_layers):
            outputs = []
            for d, suffix in enumerate(("", "_reverse")[:D]):
                w_ih = getattr(m, f"weight_ih_l{layer}{suffix}")
                u = getattr(m, f"weight_hh_l{layer}{suffix}")
                if m.recurrent_max_abs is not None:
                    u = u.clamp(-m.recurrent_max_abs, m.recurrent_max_abs)
                pre = x @ w_ih.T
                if m.bias:
                    pre = pre + getattr(m, f"bias_ih_l{layer}{suffix}")
                    pre = pre + getattr(m, f"bias_hh_l{layer}{suffix}")
                h = hx[layer * D + d]
                ys = []
                steps = pre.unbind(0)  # pre[t] would cost a full [T,B,H] zero tensor in backward
                for pre_t in reversed(steps) if d else steps:
                    h = act(pre_t + u * h)
                    ys.append(h)
                outputs.append(torch.stack(ys[::-1] if d else ys))
                finals.append(h)
            x = torch.cat(outputs, 2)
            if m.dropout > 0 and m.training and layer < m.num_layers - 1:
                x = nn.functional.dropout(x, m.dropout, training=True)
        return (x.transpose(0, 1) if m.batch_first else x), torch.stack(finals)


def needs(backend: str, cell: str, dtype: torch.dtype = torch.float32, device: str = "cpu") -> None:
    """Skips the calling test when ``backend`` cannot run ``cell`` on ``device`` here, saying
    why."""
    import pytest

    from rnnkernels.backends import LayerCall, why_not

    why = why_not(backend, LayerCall(cell, torch.device(device), dtype))
    if why is not None:
        pytest.skip(f"backend {backend!r}: {why}")


def assert_close(
    actual: Tensor, expected: Tensor, what: str = "", key: tuple[str, torch.dtype] | None = None
) -> None:
    """Compares within the tolerance of ``expected``'s dtype, or of ``key`` (TOLERANCES)."""
    atol, rtol = TOLERANCES[expected.dtype if key is None else key]
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m: f"{what}: {m}")


def outputs_and_grads(
    module: nn.Module,
    input: Tensor | PackedSequence,
    hx,
    seed: int = 0,
    used: Sequence[int] | None = None,
    cotangent_dtype: torch.dtype | None = None,
) -> tuple[list[Tensor], list[Tensor]]:
    """Runs ``module(input, hx)`` and backpropagates fixed random cotangents from the output
    and every final state (only from ``outputs[k]`` for k in ``used`` when given). Returns
    (outputs, gradients): gradients of the input data, of each given initial state, and of every
    parameter (zeros where a parameter got none). The cotangents are drawn in each output's dtype,
    or in ``cotangent_dtype`` and cast (an fp32 run with a half-type run's cotangents)."""
    output, states = module(input, hx)
    output = output.data if isinstance(output, PackedSequence) else output
    outputs = [output, *(states if isinstance(states, tuple) else (states,))]
    generator = torch.Generator().manual_seed(seed)
    loss = sum(
        (
            o * torch.randn(o.shape, generator=generator, dtype=cotangent_dtype or o.dtype).to(o)
        ).sum()
        for k, o in enumerate(outputs)
        if used is None or k in used
    )
    data = input.data if isinstance(input, PackedSequence) else input
    hx_list = [] if hx is None else list(hx) if isinstance(hx, tuple) else [hx]
    leaves = [t for t in [data, *hx_list] if t.requires_grad] + list(module.parameters())
    grads = torch.autograd.grad(loss, leaves, allow_unused=True)
    return outputs, [torch.zeros_like(p) if g is None else g for p, g in zip(leaves, grads)]


class poison_allocations:
    """Within this context every fresh floating-point allocation (torch.empty and friends, in
    Python or C++) is NaN-filled, so an element a kernel forgets to write shows up as NaN.
    This is torch's deterministic mode, which fills uninitialised memory."""

    def __enter__(self) -> poison_allocations:
        self.saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.utils.deterministic.fill_uninitialized_memory,
        )
        torch.use_deterministic_algorithms(True)
        torch.utils.deterministic.fill_uninitialized_memory = True
        return self

    def __exit__(self, *exc: object) -> None:
        enabled, warn_only, fill = self.saved
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.utils.deterministic.fill_uninitialized_memory = fill


# --- one layer's ops ------------------------------------------------------------------------------

# How many leading outputs of <cell>_fwd are results (y and the final states, differentiable);
# the rest are saved for the backward (docs/design.md §3).
N_OUT = {"lstm": 3, "gru": 2, "indrnn": 2, "rnn": 2}
N_FWD = {"lstm": 5, "gru": 4, "indrnn": 2, "rnn": 2}  # all outputs of <cell>_fwd
# Each cell's variant of its op (layer_args' ``variant``): LSTM the projection size (0: none), GRU
# whether b_hh is given, IndRNN and RNN the nonlinearity.
VARIANTS = {
    "lstm": (0, 2),
    "gru": (True, False),
    "indrnn": ("relu", "tanh"),
    "rnn": ("relu", "tanh"),
}


def mixed_lengths(T: int, B: int) -> list[int]:
    """Unsorted lengths with full rows, empty rows, rows past T (clipped, docs/design.md §3) and
    gaps between the rows that are valid at a step."""
    pattern = [T, 0, T // 2, T + 2, 1, T, max(T - 1, 1), 0, T + 1, 2]
    return [pattern[b % len(pattern)] for b in range(B)]


def lengths_arg(cell: str, args: Sequence) -> Tensor | None:
    """The ``lengths`` among ``<cell>_fwd``'s arguments (layer_args)."""
    return args[-3] if cell in ("indrnn", "rnn") else args[-2]


def layer_args(
    cell: str,
    T: int = 5,
    B: int = 4,
    H: int = 3,
    variant: int | bool | str | None = None,
    lengths: Sequence[int] | Tensor | str | None = None,
    reverse: bool = False,
    dtype: torch.dtype = torch.float64,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    requires_grad: bool = False,
) -> tuple:
    """Random arguments of ``<cell>_fwd`` (the per-layer op contract, docs/design.md §3), in its
    order: LSTM ``gx, w_hh, w_hr, h0, c0, lengths, reverse``; GRU ``gx, w_hh, b_hh, h0, lengths,
    reverse``; IndRNN ``gx, u, h0, lengths, reverse, nonlinearity``; RNN ``gx, w_hh, h0,
    lengths, reverse, nonlinearity``.

    ``variant`` (VARIANTS): LSTM the projection size P (0 or None: no ``w_hr``), GRU whether
    ``b_hh`` is given (None: given), IndRNN and RNN the nonlinearity (None: ``"tanh"``).
    ``lengths``:
    None, the lengths, ``"mixed"`` (mixed_lengths) or ``"sorted"`` (those, longest first).
    Drawn in float64 from a generator seeded with ``seed``, then cast, so the same call gives the
    same values in every dtype: gx, states and b_hh standard normal, W_hh and W_hr scaled by
    1/sqrt(fan-in) (RNN's W_hh too), IndRNN's u uniform in [-1, 1]. ``requires_grad`` makes the
    floating-point
    tensors leaves."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 1.0) -> Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    if cell == "lstm":
        P = variant or 0
        R = P or H
        w_hr = rand(P, H, scale=H**-0.5) if P else None
        tensors = [rand(T, B, 4 * H), rand(4 * H, R, scale=R**-0.5), w_hr, rand(B, R), rand(B, H)]
        rest = ()
    elif cell == "gru":
        b_hh = rand(3 * H) if variant is None or variant else None
        tensors = [rand(T, B, 3 * H), rand(3 * H, H, scale=H**-0.5), b_hh, rand(B, H)]
        rest = ()
    elif cell == "indrnn":
        u = torch.rand(H, generator=g, dtype=torch.float64) * 2 - 1
        tensors = [rand(T, B, H), u, rand(B, H)]
        rest = (variant or "tanh",)
    elif cell == "rnn":
        tensors = [rand(T, B, H), rand(H, H, scale=H**-0.5), rand(B, H)]
        rest = (variant or "tanh",)
    else:
        raise ValueError(f"unknown cell {cell!r}")
    tensors = [
        None if t is None else t.to(device, dtype).requires_grad_(requires_grad) for t in tensors
    ]
    if isinstance(lengths, str):  # "mixed" or "sorted"
        mixed = mixed_lengths(T, B)
        lengths = sorted(mixed, reverse=True) if lengths == "sorted" else mixed
    if lengths is not None:
        lengths = torch.as_tensor(lengths, dtype=torch.int64).to(device)
    return (*tensors, lengths, reverse, *rest)


def run_layer(
    kernels, cell: str, args: Sequence, dtype: torch.dtype | None = None, seed: int = 1
) -> list[Tensor]:
    """``<cell>_fwd`` then ``<cell>_bwd`` of ``kernels`` (a backend's kernel module,
    ``backends.kernels(backend, cell)``, or the oracle ``ops/<cell>/naive.py``) on ``args``
    (layer_args), cast to ``dtype`` when given, with random cotangents (seeded with ``seed``) for
    y and the final states. Returns every forward output (saved tensors included) and every
    gradient (an absent weight's is an empty [0] tensor)."""
    if dtype is not None:
        args = [a.to(dtype) if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
    outputs = getattr(kernels, f"{cell}_fwd")(*args)
    n_out = N_OUT[cell]
    g = torch.Generator().manual_seed(seed)
    cotangents = [torch.randn(o.shape, generator=g).to(o) for o in outputs[:n_out]]
    saved = (outputs[0], *outputs[n_out:])
    grads = getattr(kernels, f"{cell}_bwd")(*cotangents, *args[1:], *saved)
    return [*outputs, *grads]


# --- test grids -----------------------------------------------------------------------------------


def value_id(value: object) -> str:
    """A test id for one parameter value: a dtype's name without ``torch.``, a name attribute
    where the value has one, else str()."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    return str(getattr(value, "name", value))


def grid(
    axes: Mapping[str, Sequence],
    *,
    together: Sequence[Sequence[str]] = (),
    pairwise: bool = False,
    ids: Mapping[str, Callable[[object], str]] | None = None,
    marks: Sequence = (),
) -> list:
    """The product of ``axes`` (name -> values) as pytest params, each a tuple of values in the
    axes' order, all but a covering subset marked ``slow``: the default run keeps a few cases
    that between them hold every value of every axis, every combination of values of the axes
    in each group of ``together``, and with ``pairwise`` every combination of values of every two
    axes. Chosen greedily (the case covering most of what is still missing; on a tie the one
    with most pairs of values not yet chosen together, then the first in product order), so the
    subset is the same every run. ``-m slow`` runs the rest of the
    product. ``ids``: per axis, the id of a value (default value_id); ``marks`` go on every
    param."""
    import pytest

    names = list(axes)
    groups = [tuple(group) for group in together]
    if pairwise:
        groups += list(itertools.combinations(names, 2))
    ids = dict(ids or {})
    combos = list(itertools.product(*axes.values()))
    labels = [[ids.get(n, value_id)(v) for n, v in zip(names, combo)] for combo in combos]

    def covers(labels: list[str]) -> set[tuple]:
        value = dict(zip(names, labels))
        return {((n, value[n]),) for n in names} | {
            tuple((n, value[n]) for n in group) for group in groups
        }

    def pairs(labels: list[str]) -> set[tuple]:
        return set(itertools.combinations(zip(names, labels), 2))

    needed = set().union(*(covers(lab) for lab in labels))
    unseen = set().union(*(pairs(lab) for lab in labels))
    default = set()
    while needed:  # most of what is missing; on a tie, most pairs of values not yet seen
        best = max(
            range(len(combos)),
            key=lambda i: (len(covers(labels[i]) & needed), len(pairs(labels[i]) & unseen)),
        )
        default.add(best)
        needed -= covers(labels[best])
        unseen -= pairs(labels[best])
    return [
        pytest.param(
            *combo,
            id="-".join(part for part in label if part),
            marks=[*marks, *([] if i in default else [pytest.mark.slow])],
        )
        for i, (combo, label) in enumerate(zip(combos, labels))
    ]
