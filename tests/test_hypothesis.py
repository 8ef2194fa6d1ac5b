"""Property-based parity with nn.LSTM / nn.GRU / nn.RNN: random configurations and inputs;
outputs, final states and every gradient (input, hx, all parameters) within the fp32 bar.

Tolerance: TOLERANCES[float32] (atol 5e-5) unscaled, also for weight gradients. Those are sums
over at most T*B = 32 time-step/batch terms of O(1) values, so differing summation order costs
about 32 * 6e-8 * |g| in fp32, far below 5e-5 at these sizes; no scaling is needed. The cotangents
are random (not all ones) so gradients are not degenerate.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels
from rnnkernels.testing import TOLERANCES

ATOL, RTOL = TOLERANCES[torch.float32]

SETTINGS = settings(
    max_examples=30,  # per (cell, layout): 270 examples in all
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@st.composite
def configs(draw, cell: str, layout: str):
    hidden = draw(st.integers(1, 5))
    config = {
        "input_size": draw(st.integers(1, 5)),
        "hidden_size": hidden,
        "num_layers": draw(st.integers(1, 2)),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bidirectional": draw(st.booleans()),
    }
    if cell == "LSTM" and hidden > 1 and draw(st.booleans()):
        config["proj_size"] = draw(st.integers(1, hidden - 1))
    if cell == "RNN":
        config["nonlinearity"] = draw(st.sampled_from(["tanh", "relu"]))
    T = draw(st.integers(1, 8))
    B = 1 if layout == "unbatched" else draw(st.integers(1, 4))
    case = {
        "layout": layout,
        "T": T,
        "B": B,
        "with_hx": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if layout == "packed":
        case["lengths"] = draw(st.lists(st.integers(1, T), min_size=B, max_size=B))
        case["enforce_sorted"] = draw(st.booleans())
        if case["enforce_sorted"]:
            case["lengths"] = sorted(case["lengths"], reverse=True)
    return config, case


def _build(cell: str, config: dict, case: dict):
    """(ours, torch's) with the same weights, plus the input and hx (leaves that need grads)."""
    torch.manual_seed(case["seed"])
    ours = getattr(rnnkernels, cell)(**config)
    theirs = getattr(nn, cell)(**config)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    g = torch.Generator().manual_seed(case["seed"])
    T, B, I = case["T"], case["B"], config["input_size"]  # noqa: E741
    if case["layout"] == "unbatched":
        x = torch.randn(T, I, generator=g)
    else:
        x = torch.randn((B, T, I) if config["batch_first"] else (T, B, I), generator=g)
    x.requires_grad_()
    hx = None
    if case["with_hx"]:
        D = 2 if config["bidirectional"] else 1
        lead = (config["num_layers"] * D,) + (() if case["layout"] == "unbatched" else (B,))
        H = config["hidden_size"]
        sizes = [config.get("proj_size") or H] + ([H] if cell == "LSTM" else [])
        hx = [torch.randn(lead + (s,), generator=g).requires_grad_() for s in sizes]
    return ours, theirs, x, hx


def _forward(module, cell, x, hx, config, case):
    if case["layout"] == "packed":
        inp = pack_padded_sequence(
            x, torch.tensor(case["lengths"]), batch_first=config["batch_first"],
            enforce_sorted=case["enforce_sorted"],
        )  # fmt: skip
    else:
        inp = x
    state = None if hx is None else (tuple(hx) if cell == "LSTM" else hx[0])
    out, final = module(inp, state)
    if isinstance(out, PackedSequence):
        out = out.data
    return out, list(final) if isinstance(final, tuple) else [final]


def _check(cell: str, config: dict, case: dict) -> None:
    ours, theirs, x, hx = _build(cell, config, case)
    results = []
    for module in (ours, theirs):
        out, finals = _forward(module, cell, x, hx, config, case)
        g = torch.Generator().manual_seed(case["seed"] + 1)  # the same cotangents for both
        loss = (out * torch.randn(out.shape, generator=g)).sum()
        for f in finals:
            loss = loss + (f * torch.randn(f.shape, generator=g)).sum()
        leaves = [x, *(hx or []), *module.parameters()]
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        results.append((out.detach(), [f.detach() for f in finals], grads))

    (out, finals, grads), (t_out, t_finals, t_grads) = results
    torch.testing.assert_close(out, t_out, atol=ATOL, rtol=RTOL, msg=lambda m: f"output: {m}")
    assert len(finals) == len(t_finals)
    for k, (a, b) in enumerate(zip(finals, t_finals, strict=True)):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL, msg=lambda m, k=k: f"state {k}: {m}")
    names = ["input"] + [f"hx[{k}]" for k in range(len(hx or []))]
    names += [n for n, _ in ours.named_parameters()]
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    for name, a, b in zip(names, grads, t_grads, strict=True):
        if b is None:  # torch: no path from this leaf to the loss; then ours has none or zeros
            assert a is None or not a.any(), name
            continue
        assert a is not None, name
        torch.testing.assert_close(
            a, b, atol=ATOL, rtol=RTOL, msg=lambda m, n=name: f"grad {n}: {m}"
        )


@pytest.mark.parametrize("layout", ["padded", "unbatched", "packed"])
@pytest.mark.parametrize("cell", ["LSTM", "GRU", "RNN"])
def test_parity_random_configs(cell, layout):
    @SETTINGS
    @given(configs(cell, layout))
    def check(drawn):
        config, case = drawn
        _check(cell, config, case)

    check()
