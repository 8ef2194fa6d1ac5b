"""The process that tests/test_fuzz.py runs its cases in: a case that kills a process kills only
this worker, which the test records and restarts.

Protocol, one JSON object per line each way. Once it has imported everything the worker writes
``{"ready": true}``. Then, per request ``{"case": <case>, "run": "ours" | "torch"}`` that the
parent writes to its stdin, it answers on its stdout with exactly one line, one of

    {"outcome": "ok", "shapes": [[...], ...], "max_diff": float | None}
    {"outcome": "raised", "types": [class names, most derived first], "message": str}
    {"outcome": "invalid case", "message": str}   (the fuzzer could not build the case)

"ours" runs the case through rnnkernels on the case's backend; "torch" runs its input and states
through torch.nn's module of the same configuration (nn.RNN for IndRNN). A crash ends the process
with no answer: the parent reads EOF and the exit status. Anything else printed goes to stderr,
where faulthandler also writes the Python stack of a crash.

A case is a plain dict, drawn by tests/test_fuzz.py:

    cell       "LSTM" | "GRU" | "RNN" | "IndRNN"
    api        "module" (setattr on a module) | "functional" (rnnkernels.functional.<cell>)
    backend    a backend name
    config     the module's constructor arguments (input_size, hidden_size, num_layers, bias,
               batch_first, bidirectional; proj_size for LSTM, nonlinearity for RNN, IndRNN)
    layout     "padded" | "unbatched" | "packed"
    T, B       sizes; packed input has "lengths" ([B] ints) and "enforce_sorted"
    hx         whether initial states are passed
    seed       seeds every value
    fault      what is malformed (see apply_fault), or {"kind": "strides", ...}: the same call
               with one tensor laid out non-contiguously, compared with the contiguous call
               (max_diff: the largest difference over outputs, final states and gradients)

Reproduce one case: echo '{"case": {...}, "run": "ours"}' | python tests/fuzz_worker.py
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

if not torch.cuda.is_available():  # Triton's interpreter must be chosen before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # rnnkernels from this repository

import rnnkernels  # noqa: E402

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "IndRNN": 1}
SLOTS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr")  # a functional tuple
TORCH_TWIN = {"LSTM": nn.LSTM, "GRU": nn.GRU, "RNN": nn.RNN, "IndRNN": nn.RNN}
FUNCTIONAL_ONLY = ("hidden_size", "weights_count", "tuple_length")  # faults of the call itself
# A worker that allocates more than this gets an allocation error instead of the OOM killer
# (imported, it maps about 1.5 GiB).
ADDRESS_SPACE = 6 * 2**30

Outputs = list[Tensor]


# --- the shapes a case implies (the fuzzer draws wrong ones from these) ---------------------------


def param_shapes(cell: str, config: dict) -> dict[str, list[int]]:
    """Every parameter of the module, by torch's name, with its shape, in the module's order."""
    G, H, P = GATES[cell], config["hidden_size"], config.get("proj_size", 0)
    R = P or H
    shapes = {}
    for layer in range(config["num_layers"]):
        for suffix in ("", "_reverse") if config["bidirectional"] else ("",):
            layer_input = config["input_size"] if layer == 0 else R * num_directions(config)
            shapes[f"weight_ih_l{layer}{suffix}"] = [G * H, layer_input]
            shapes[f"weight_hh_l{layer}{suffix}"] = [G * H] if cell == "IndRNN" else [G * H, R]
            if config["bias"]:
                shapes[f"bias_ih_l{layer}{suffix}"] = [G * H]
                shapes[f"bias_hh_l{layer}{suffix}"] = [G * H]
            if P:
                shapes[f"weight_hr_l{layer}{suffix}"] = [P, H]
    return shapes


def state_shapes(case: dict) -> dict[str, list[int]]:
    """The initial states: h0 (and c0 for LSTM)."""
    config = case["config"]
    H, P = config["hidden_size"], config.get("proj_size", 0)
    lead = [config["num_layers"] * num_directions(config)]
    if case["layout"] != "unbatched":
        lead.append(case["B"])
    if case["cell"] == "LSTM":
        return {"h0": [*lead, P or H], "c0": [*lead, H]}
    return {"h0": [*lead, H]}


def input_shape(case: dict) -> list[int]:
    """The input tensor's shape (a packed input's data: [rows, I])."""
    T, B, I = case["T"], case["B"], case["config"]["input_size"]  # noqa: E741
    if case["layout"] == "packed":
        return [sum(case["lengths"]), I]
    if case["layout"] == "unbatched":
        return [T, I]
    return [B, T, I] if case["config"]["batch_first"] else [T, B, I]


def num_directions(config: dict) -> int:
    return 2 if config["bidirectional"] else 1


# --- building a call ------------------------------------------------------------------------------


def make_tensor(spec: dict, generator: torch.Generator) -> Tensor:
    """A tensor of spec's shape, dtype and device; meta tensors (any size) allocate nothing."""
    shape, dtype = spec["shape"], getattr(torch, spec["dtype"])
    if spec["device"] == "meta":
        return torch.empty(shape, dtype=dtype, device="meta")
    if dtype.is_floating_point:
        return torch.rand(shape, generator=generator).to(dtype) - 0.5
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=generator).bool()
    return torch.randint(-3, 4, shape, generator=generator).to(dtype)


def strided(t: Tensor, how: str) -> Tensor:
    """The same values laid out non-contiguously: "step", every other element of a last dim
    twice as long; "transpose", a transposed copy viewed back (the first two dims of size > 1)."""
    if how == "step":
        wide = t.new_zeros(*t.shape[:-1], 2 * t.shape[-1])
        wide[..., ::2] = t
        out = wide[..., ::2]
    else:
        a, b = [d for d, n in enumerate(t.shape) if n > 1][:2]
        out = t.transpose(a, b).contiguous().transpose(a, b)
    if out.is_contiguous():
        raise ValueError(f"{how} of a {list(t.shape)} tensor is contiguous")
    return out.detach().requires_grad_(t.requires_grad)


class Call:
    """One call's tensors by name: "input" (a packed input's data), the states "h0" / "c0", and
    the parameters; a packed input's other fields; the declared hidden size (functional API)."""

    def __init__(self, case: dict) -> None:
        self.case = case
        g = torch.Generator().manual_seed(case["seed"])
        self.shapes = param_shapes(case["cell"], case["config"])
        if case["hx"]:
            self.shapes.update(state_shapes(case))
        fault = case["fault"]
        replaced = fault["name"] if fault["kind"] in ("param", "state") else None  # never made
        self.tensors: dict[str, Tensor | None] = {
            name: make_tensor({"shape": shape, "dtype": "float32", "device": "cpu"}, g)
            for name, shape in self.shapes.items()
            if name != replaced
        }
        self.packed: dict[str, Tensor | None] = {}
        if case["layout"] == "packed":
            padded = torch.rand(case["T"], case["B"], case["config"]["input_size"], generator=g)
            packed = pack_padded_sequence(padded, case["lengths"], False, case["enforce_sorted"])
            self.tensors["input"] = packed.data
            self.packed = {
                "batch_sizes": packed.batch_sizes,
                "sorted_indices": packed.sorted_indices,
                "unsorted_indices": packed.unsorted_indices,
            }
        else:
            self.tensors["input"] = torch.rand(input_shape(case), generator=g) - 0.5
        self.hidden_size = case["config"]["hidden_size"]
        self.generator = g
        for t in self.tensors.values():
            t.requires_grad_(True)

    def input(self) -> Tensor | PackedSequence:
        x = self.tensors["input"]
        if self.case["layout"] != "packed":
            return x
        p = self.packed  # the namedtuple's own constructor: no checks, nothing computed
        fields = (x, p["batch_sizes"], p["sorted_indices"], p["unsorted_indices"])
        return tuple.__new__(PackedSequence, fields)

    def hx(self) -> Tensor | tuple[Tensor, Tensor] | None:
        if not self.case["hx"]:
            return None
        h0 = self.tensors["h0"]
        return (h0, self.tensors["c0"]) if self.case["cell"] == "LSTM" else h0

    def leaves(self) -> list[Tensor]:
        return [t for t in self.tensors.values() if t is not None and t.requires_grad]


def apply_fault(call: Call, fault: dict) -> None:
    """Makes the call malformed as ``fault`` says. Kinds:

    param         {"name", "tensor": {"shape", "dtype", "device"} | None (absent)}
    state         {"name": "h0" | "c0", "tensor": {...}}
    input         {"tensor": {...}} (a packed input's data)
    packed        {"batch_sizes" / "sorted_indices" / "unsorted_indices": {"values", "dtype",
                  "device"}, "rows": data's row count}
    hidden_size   {"value"}: the declared hidden size (functional API)
    weights_count {"delta"}: one weight tuple fewer (-1) or more (+1) (functional API)
    tuple_length  {"index"}: weights[index] without its last entry (functional API)
    empty_batch   nothing: the case's B = 0 is well-formed
    """
    kind = fault["kind"]
    if kind in FUNCTIONAL_ONLY and call.case["api"] != "functional":
        raise ValueError(f"a {kind} fault needs the functional API")
    if kind in ("param", "state", "input"):
        name = fault.get("name", "input")
        if name not in call.shapes and name != "input":
            raise KeyError(f"the call has no tensor {name!r}")
        spec = fault["tensor"]
        call.tensors[name] = None if spec is None else make_tensor(spec, call.generator)
    elif kind == "packed":
        for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
            if field in fault:
                spec = fault[field]
                dtype = getattr(torch, spec["dtype"])
                call.packed[field] = torch.tensor(
                    spec["values"], dtype=dtype, device=spec["device"]
                )
        if "rows" in fault:
            shape = [fault["rows"], call.case["config"]["input_size"]]
            call.tensors["input"] = torch.rand(shape, generator=call.generator)
    elif kind == "hidden_size":
        call.hidden_size = fault["value"]
    elif kind not in ("weights_count", "tuple_length", "empty_batch"):  # (see run_ours; B = 0)
        raise ValueError(f"unknown fault kind {kind!r}")


# --- running a call ---------------------------------------------------------------------------


def run_ours(call: Call) -> Outputs:
    case = call.case
    cell, config = case["cell"], case["config"]
    if case["api"] == "module":  # built on meta (allocating nothing), then every parameter set
        module = getattr(rnnkernels, cell)(**config, device="meta", backend=case["backend"])
        for name in param_shapes(cell, config):
            t = call.tensors[name]
            param = None if t is None else nn.Parameter(t, requires_grad=t.is_floating_point())
            setattr(module, name, param)
            call.tensors[name] = param  # the leaf that gets the gradient
        return flatten(module(call.input(), call.hx()))
    slots = SLOTS if cell == "LSTM" else SLOTS[:4]
    D = num_directions(config)
    weights = []
    for index in range(config["num_layers"] * D):
        suffix = f"_l{index // D}" + ("_reverse" if index % D else "")
        weights.append(tuple(call.tensors.get(slot + suffix) for slot in slots))
    fault = case["fault"]
    if fault["kind"] == "weights_count":
        weights = weights[:-1] if fault["delta"] < 0 else [*weights, weights[-1]]
    elif fault["kind"] == "tuple_length":
        weights[fault["index"]] = weights[fault["index"]][:-1]
    function = getattr(rnnkernels.functional, cell.lower())
    kwargs = {k: config[k] for k in ("num_layers", "bidirectional", "batch_first")}
    if cell in ("RNN", "IndRNN"):
        kwargs["nonlinearity"] = config["nonlinearity"]
    out = function(
        call.input(), call.hx(), weights, call.hidden_size, **kwargs, backend=case["backend"]
    )
    return flatten(out)


def run_torch(call: Call) -> Outputs:
    module = TORCH_TWIN[call.case["cell"]](**call.case["config"])
    return flatten(module(call.input(), call.hx()))


def flatten(result) -> Outputs:
    """(output, h_n) or (output, (h_n, c_n)) -> [output (a packed output's data), h_n, ...]."""
    output, states = result
    if isinstance(output, PackedSequence):
        output = output.data
    return [output, *(states if isinstance(states, tuple) else (states,))]


def forward_backward(call: Call) -> Outputs:
    """The outputs, then the gradients of every leaf for fixed random cotangents."""
    outputs = run_ours(call)
    cotangents = torch.Generator().manual_seed(call.case["seed"])
    loss = sum((o * torch.randn(o.shape, generator=cotangents)).sum() for o in outputs)
    grads = torch.autograd.grad(loss, call.leaves(), allow_unused=True)
    return [*outputs, *(grad for grad in grads if grad is not None)]


def max_diff(expected: Outputs, got: Outputs) -> float:
    """The largest elementwise difference (NaN in both places: equal; shapes differ: inf)."""
    if [e.shape for e in expected] != [g.shape for g in got]:
        return float("inf")
    worst = 0.0
    for e, g in zip(expected, got):
        e, g = e.detach(), g.detach()
        diff = (e - g).abs().nan_to_num(float("inf"))
        diff[e.isnan() & g.isnan()] = 0
        worst = max(worst, float(diff.max()) if diff.numel() else 0.0)
    return worst


def prepare(case: dict, run: str) -> Callable[[], dict]:
    """Builds the case (an error here is the fuzzer's); returns the call to answer with."""
    call = Call(case)
    fault = case["fault"]
    if fault["kind"] == "strides":
        odd = Call(case)
        odd.tensors[fault["target"]] = strided(odd.tensors[fault["target"]], fault["how"])
        return lambda: {"max_diff": max_diff(forward_backward(call), forward_backward(odd))}
    apply_fault(call, fault)
    run_call = run_ours if run == "ours" else run_torch
    return lambda: {"shapes": [list(o.shape) for o in run_call(call)]}


def answer(request: dict) -> dict:
    try:
        call = prepare(request["case"], request["run"])
    except Exception as e:
        return {"outcome": "invalid case", "message": f"{type(e).__name__}: {e}"}
    try:
        result = call()
    except Exception as e:
        return {
            "outcome": "raised",
            "types": [cls.__name__ for cls in type(e).__mro__],
            "message": str(e),
        }
    return {"outcome": "ok", "shapes": None, "max_diff": None, **result}


def main() -> None:
    faulthandler.enable()
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    torch.set_num_threads(1)
    replies = os.fdopen(os.dup(1), "w", buffering=1)  # the protocol's channel: the real stdout
    os.dup2(2, 1)  # everything else printed goes to stderr
    replies.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        replies.write(json.dumps(answer(json.loads(line))) + "\n")


if __name__ == "__main__":
    main()
