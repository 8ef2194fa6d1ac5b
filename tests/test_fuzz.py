"""Crash safety: a malformed module or call raises before any backend runs; it never kills the
process and never runs silently.

Hypothesis draws LSTM / GRU / RNN / IndRNN calls (module or functional API, 1-2 layers,
bidirectional or not, with projection or not, padded / unbatched / packed input) with one thing
malformed, by
family: a parameter (shape, dtype, device, or absent), weight_hh far too small for a large hidden
size ("overrun"), an initial state, the input, a PackedSequence field, or what the functional API
declares (hidden size, weight tuples). Sizes stay tiny (T <= 4, B <= 3, H <= 6) but in overrun
cases, where nothing large is allocated either. Each case runs in a worker process
(tests/fuzz_worker.py, restarted when it dies) on every backend.

Expected by spec, not by running torch.nn on malformed weights (torch.nn itself crashes on some):
every malformed case raises ValueError, RuntimeError or TypeError, and no worker dies. Two
families are well-formed and must run: "strides" (one tensor non-contiguous: the numbers of the
contiguous call within 5e-5, gradients included) and "empty_batch" (B = 0: torch.nn's shapes).
State and input cases also go through torch.nn, which checks those safely: where it is strict
(see torch_checks) it must refuse them too, a check of the fuzzer's spec (a crash of torch's is
not held against us).

Failures are collected over every example (no shrinking) and reported together, each with the
worker request that replays it: echo '<request>' | python tests/fuzz_worker.py
"""

from __future__ import annotations

import functools
import json
import select
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
from fuzz_worker import input_shape, param_shapes, state_shapes
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from rnnkernels.testing import TOLERANCES

CELLS = ("LSTM", "GRU", "RNN", "IndRNN")
LAYOUTS = ("padded", "unbatched", "packed")
WRONG_DTYPES = ("float64", "float16", "bfloat16", "int32", "int64", "bool")
HUGE = (2**31, 2**40)  # only on the meta device or declared: nothing of that size is allocated
OVERRUN_HIDDEN = 2048  # the overrun family's: a weight_hh read as [G*H, H] is megabytes
# strides: non-contiguous vs contiguous, outputs and gradients, within the fp32 parity bar
TOLERANCE = TOLERANCES[torch.float32][0]
EXAMPLES = 20  # per backend and family in the default run
SLOW_EXAMPLES = 300  # ... in the slow run
ACCEPTED_ERRORS = {"ValueError", "RuntimeError", "TypeError"}  # what a malformed call raises
WELL_FORMED = ("strides", "empty_batch")  # the families that must run; the others must raise
REQUEST_TIMEOUT_S = 300  # a first request imports torch and may compile the numba kernels


# --- strategies -----------------------------------------------------------------------------------


def one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in n draws."""
    return st.sampled_from(range(n)).map(lambda i: i == 0)


@st.composite
def calls(draw, family: str, backend: str) -> dict:
    """A well-formed call for ``family``, less its fault (see fuzz_worker's case keys)."""
    cell = draw(st.sampled_from(CELLS))
    low = 2 if family == "strides" else 1  # a non-contiguous layout needs sizes of 2 at least
    overrun = family == "overrun"  # one layer, one direction, no projection, a large H
    hidden = OVERRUN_HIDDEN if overrun else draw(st.integers(low, 6))
    config = {
        "input_size": draw(st.integers(low, 5)),
        "hidden_size": hidden,
        "num_layers": 1 if overrun else draw(st.integers(1, 2)),
        "bias": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bidirectional": not overrun and draw(st.booleans()),
    }
    if cell == "LSTM":
        config["proj_size"] = 0 if overrun else draw(st.sampled_from([0, *range(low, hidden)]))
    if cell in ("RNN", "IndRNN"):
        config["nonlinearity"] = draw(st.sampled_from(["relu", "tanh"]))
    api = "functional" if family == "declared" else draw(st.sampled_from(["module", "functional"]))
    layout = {"packed": "packed", "empty_batch": "padded"}.get(family)
    T = draw(st.integers(low, 4))
    case = {
        "cell": cell,
        "api": api,
        "backend": backend,
        "config": config,
        "layout": layout or draw(st.sampled_from(LAYOUTS)),
        "T": T,
        "B": 0 if family == "empty_batch" else draw(st.integers(low, 3)),
        "hx": family == "state" or draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31 - 1)),
    }
    if case["layout"] == "packed":
        lengths = draw(st.lists(st.integers(1, T), min_size=case["B"], max_size=case["B"]))
        case["enforce_sorted"] = draw(st.booleans())
        case["lengths"] = sorted(lengths, reverse=True) if case["enforce_sorted"] else lengths
    return case


def sizes_other_than(n: int, huge: bool = False) -> st.SearchStrategy[int]:
    """Any size but n: 0, 1, its neighbours, a half, a double, up to 2n + 1; HUGE if allowed."""
    edges = {0, 1, n - 1, n + 1, n // 2, 2 * n, *(HUGE if huge else ())}
    return st.one_of(st.sampled_from(sorted(edges)), st.integers(0, 2 * n + 1)).filter(
        lambda v: v != n
    )


@st.composite
def wrong_shapes(draw, shape: list[int], huge: bool = False) -> list[int]:
    """Any shape but ``shape``: one size changed, a dimension dropped or added, or reversed."""
    hows = ["resize", "drop", "add"] + (["reverse"] if shape[::-1] != shape else [])
    how = draw(st.sampled_from(hows))
    d = draw(st.integers(0, len(shape) - 1))
    if how == "resize":
        return [*shape[:d], draw(sizes_other_than(shape[d], huge)), *shape[d + 1 :]]
    if how == "drop":
        return shape[:d] + shape[d + 1 :]
    if how == "add":
        d = draw(st.integers(0, len(shape)))
        return [*shape[:d], draw(st.integers(1, 3)), *shape[d:]]
    return shape[::-1]


@st.composite
def wrong_tensors(draw, shape: list[int], shapes=wrong_shapes) -> dict:
    """A tensor spec unlike (shape, float32, CPU) in one or more of the three; ``shapes(shape,
    huge)`` draws the wrong shape (huge sizes on the meta device only)."""
    wrong = draw(st.sets(st.sampled_from(["shape", "dtype", "device"]), min_size=1))
    device = "meta" if "device" in wrong else "cpu"
    return {
        "shape": draw(shapes(shape, device == "meta")) if "shape" in wrong else shape,
        "dtype": draw(st.sampled_from(WRONG_DTYPES)) if "dtype" in wrong else "float32",
        "device": device,
    }


@st.composite
def parameter_faults(draw, case: dict) -> dict:
    shapes = param_shapes(case["cell"], case["config"])
    name = draw(st.sampled_from(list(shapes)))
    tensor = None if draw(one_in(5)) else draw(wrong_tensors(shapes[name]))  # None: absent
    return {"kind": "param", "name": name, "tensor": tensor}


@st.composite
def overrun_faults(draw, case: dict) -> dict:
    """weight_hh_l0 (IndRNN's u) far too small for the large hidden size of this family's calls:
    a kernel trusting the sizes reads megabytes past it (numba and Triton crashed). Nothing large
    is allocated: the worker never makes the correctly shaped weight_hh_l0."""
    shape = param_shapes(case["cell"], case["config"])["weight_hh_l0"]
    d = draw(st.integers(0, len(shape) - 1))
    small = [*shape[:d], draw(st.integers(0, 2)), *shape[d + 1 :]]
    return {
        "kind": "param",
        "name": "weight_hh_l0",
        "tensor": {"shape": small, "dtype": "float32", "device": "cpu"},
    }


@st.composite
def state_faults(draw, case: dict) -> dict:
    shapes = state_shapes(case)
    name = draw(st.sampled_from(list(shapes)))
    return {"kind": "state", "name": name, "tensor": draw(wrong_tensors(shapes[name]))}


@st.composite
def wrong_input_shapes(draw, case: dict, shape: list[int], huge: bool) -> list[int]:
    """Input shapes that are wrong whatever the states: the feature size, no time steps, or the
    rank (a batch size alone is not wrong: it is checked against the states)."""
    hows = ["feature", "rank"] + ([] if case["layout"] == "packed" else ["no time steps"])
    how = draw(st.sampled_from(hows))
    if how == "feature":
        return [*shape[:-1], draw(sizes_other_than(shape[-1], huge))]
    if how == "no time steps":
        time = 1 if case["layout"] == "padded" and case["config"]["batch_first"] else 0
        return [*shape[:time], 0, *shape[time + 1 :]]
    if case["layout"] == "packed":
        return draw(st.sampled_from([[shape[0] * shape[1]], [1, *shape]]))
    return draw(st.sampled_from([[shape[-1]], [1, 1, *shape[-2:]]]))


@st.composite
def input_faults(draw, case: dict) -> dict:
    shapes = functools.partial(wrong_input_shapes, case)
    return {"kind": "input", "tensor": draw(wrong_tensors(input_shape(case), shapes))}


@st.composite
def packed_faults(draw, case: dict) -> dict:
    """One broken invariant of a PackedSequence. batch_sizes: a 1-D int64 CPU tensor, positive,
    non-increasing, summing to data's rows; sorted_indices: a 1-D int64 tensor on data's device,
    a permutation of range(B) (unsorted_indices comes as its inverse: only one thing is wrong)."""
    B, lengths = case["B"], case["lengths"]
    sizes = [sum(n > t for n in lengths) for t in range(max(lengths))]
    field = draw(st.sampled_from(["batch_sizes", "sorted_indices", "rows"]))
    if field == "rows":
        return {"kind": "packed", "rows": draw(sizes_other_than(sum(sizes)))}
    fault = {"kind": "packed"}
    if field == "batch_sizes":
        values = sizes
        hows = ["increasing", "zero", "negative", "empty", "rank", "dtype", "device"]
        how = draw(st.sampled_from(hows))
        i = draw(st.integers(0, len(sizes)))
        if how == "increasing":  # sizes[i] replaced (or one appended) by more than sizes[i - 1]
            i = max(i, 1)
            values = [*sizes[:i], sizes[i - 1] + draw(st.integers(1, 2)), *sizes[i + 1 :]]
            fault["rows"] = sum(values)  # the rows match: only the order is wrong
        elif how == "zero":
            values = [*sizes[:i], 0, *sizes[i:]]
        elif how == "negative":
            values = [*sizes[:i], -draw(st.integers(1, 3)), *sizes[i + 1 :]]
        elif how == "empty":
            values = []
        elif how == "rank":
            values = [sizes]
    else:
        values = order = sorted(range(B), key=lambda b: -lengths[b])
        inverse = [order.index(b) for b in range(B)]
        hows = ["out of range", "negative", "length", "rank", "dtype", "device"]
        how = draw(st.sampled_from(hows + (["duplicate"] if B > 1 else [])))
        i = draw(st.integers(0, B - 1))
        if how == "duplicate":
            values = [*order[:i], order[i - 1], *order[i + 1 :]]
        elif how in ("out of range", "negative"):
            wrong = B + draw(st.integers(0, 2)) if how == "out of range" else -1
            values = [*order[:i], wrong, *order[i + 1 :]]
        elif how == "length":  # a permutation (the identity) of one more or one fewer
            values = inverse = list(range(B + draw(st.sampled_from([-1, 1]))))
        elif how == "rank":
            values = [order]
        fault["unsorted_indices"] = {"values": inverse, "dtype": "int64", "device": "cpu"}
    dtype = draw(st.sampled_from(["int32", "int16", "float32"])) if how == "dtype" else "int64"
    device = "meta" if how == "device" else "cpu"
    fault[field] = {"values": values, "dtype": dtype, "device": device}
    return fault


@st.composite
def declared_faults(draw, case: dict) -> dict:
    """The functional API's own arguments contradict its tensors."""
    kind = draw(st.sampled_from(["hidden_size", "weights_count", "tuple_length"]))
    if kind == "hidden_size":  # huge only with states given: without, it sizes the zero states
        value = draw(sizes_other_than(case["config"]["hidden_size"], huge=case["hx"]))
        return {"kind": kind, "value": value}
    if kind == "weights_count":
        return {"kind": kind, "delta": draw(st.sampled_from([-1, 1]))}
    D = 2 if case["config"]["bidirectional"] else 1
    return {"kind": kind, "index": draw(st.integers(0, case["config"]["num_layers"] * D - 1))}


@st.composite
def stride_faults(draw, case: dict) -> dict:
    """Not a fault: one tensor non-contiguous (its values unchanged)."""
    shapes = {**param_shapes(case["cell"], case["config"]), "input": input_shape(case)}
    if case["hx"]:
        shapes.update(state_shapes(case))
    target = draw(st.sampled_from(sorted(shapes)))
    transposable = sum(n > 1 for n in shapes[target]) >= 2
    how = draw(st.sampled_from(["step", "transpose"] if transposable else ["step"]))
    return {"kind": "strides", "target": target, "how": how}


FAMILIES = {
    "parameter": parameter_faults,
    "overrun": overrun_faults,
    "state": state_faults,
    "input": input_faults,
    "packed": packed_faults,
    "declared": declared_faults,
    "strides": stride_faults,
    "empty_batch": lambda case: st.just({"kind": "empty_batch"}),
}


@st.composite
def cases(draw, family: str, backend: str) -> dict:
    case = draw(calls(family, backend))
    return {**case, "fault": draw(FAMILIES[family](case))}


# --- the worker -----------------------------------------------------------------------------------


class Worker:
    """tests/fuzz_worker.py in a process of its own (protocol: see there), started on first use
    and again after it dies or hangs."""

    script = Path(__file__).with_name("fuzz_worker.py")

    def __init__(self) -> None:
        self.process: subprocess.Popen | None = None
        self.stderr = None

    def run(self, case: dict, run: str) -> dict:
        """The worker's answer, or {"outcome": "died" | "hung", "returncode", "stderr"}."""
        if self.process is None:
            self.start()
        try:
            self.process.stdin.write(json.dumps({"case": case, "run": run}) + "\n")
            self.process.stdin.flush()
            line = self.read_line()
        except BrokenPipeError:
            line = ""
        if line:
            return json.loads(line)
        return {"outcome": "died" if line == "" else "hung", **self.end()}

    def start(self) -> None:
        """Starts a worker; raises if it cannot (no point in running any case then)."""
        self.stderr = tempfile.TemporaryFile()  # read back when the worker dies
        self.process = subprocess.Popen(
            [sys.executable, str(self.script)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
        )
        if self.read_line() != '{"ready": true}\n':
            raise RuntimeError(f"the fuzz worker did not start: {self.end()}")

    def read_line(self) -> str | None:
        """The worker's next line; "" at EOF; None after REQUEST_TIMEOUT_S."""
        answered = select.select([self.process.stdout], [], [], REQUEST_TIMEOUT_S)[0]
        return self.process.stdout.readline() if answered else None

    def end(self) -> dict:
        """Ends a dead or hung worker: its exit status and the end of its stderr."""
        self.process.kill()
        returncode = self.process.wait()
        self.stderr.seek(0)
        stderr = self.stderr.read().decode(errors="replace")
        self.stderr.close()
        self.process = None
        return {"returncode": returncode, "stderr": crash_report(stderr)}

    def close(self) -> None:
        if self.process is not None:
            self.process.stdin.close()  # the worker ends at EOF
            self.process.wait(timeout=60)
            self.stderr.close()


def crash_report(stderr: str) -> str:
    """The end of a dead worker's stderr: from faulthandler's report on, its stack (innermost
    first) without the list of extension modules."""
    start = stderr.rfind("Fatal Python error")
    lines = [
        x for x in stderr[max(start, 0) :].splitlines() if not x.startswith("Extension modules")
    ]
    return "\n".join(lines[:16] if start >= 0 else lines[-16:])


@pytest.fixture(scope="module")
def worker():
    w = Worker()
    yield w
    w.close()


# --- verdicts -------------------------------------------------------------------------------------


def torch_checks(family: str, case: dict) -> bool:
    """Whether torch.nn's verdict checks the fuzzer's spec: it runs B = 0, and refuses padded and
    unbatched inputs and states of a wrong shape or device. Not always of a wrong dtype (an int32
    c0 can run), nor with packed input (it permutes hx by sorted_indices before checking it, so
    extra batch rows pass; meta tensors pass)."""
    if family in ("state", "input"):
        return case["layout"] != "packed" and case["fault"]["tensor"]["dtype"] == "float32"
    return family == "empty_batch"


def problem(worker: Worker, family: str, case: dict) -> str | None:
    """What is wrong with how ``case`` ran through our code (None: nothing)."""
    ours = worker.run(case, "ours")
    if ours["outcome"] in ("died", "hung"):
        rc = ours["returncode"]
        how = f"killed by {signal.Signals(-rc).name}" if rc < 0 else f"exit status {rc}"
        return f"CRASH: the worker {ours['outcome']} ({how}); its stderr ends:\n{ours['stderr']}"
    if ours["outcome"] == "invalid case":
        return f"FUZZER: could not build the case: {ours['message']}"
    theirs = worker.run(case, "torch") if torch_checks(family, case) else {}
    torch_says = theirs.get("outcome")  # None: not asked; "died": torch crashed, not held on us
    if family in WELL_FORMED:
        if ours["outcome"] == "raised":
            return f"REFUSED a well-formed call: {ours['types'][0]}: {ours['message']}"
        if family == "strides" and not ours["max_diff"] <= TOLERANCE:
            return f"MISMATCH with the contiguous call: max difference {ours['max_diff']:.3g}"
        if torch_says == "ok" and ours["shapes"] != theirs["shapes"]:
            return f"SHAPES {ours['shapes']}, torch.nn gives {theirs['shapes']}"
        if torch_says == "raised":
            return f"FUZZER: torch.nn refuses this well-formed call: {theirs['message']}"
        return None
    if ours["outcome"] == "ok":
        return f"SILENT: ran and returned shapes {ours['shapes']}"
    error = f"{ours['types'][0]}: {ours['message'][:300]}"
    if not ACCEPTED_ERRORS & set(ours["types"]):
        return f"WRONG ERROR: raised {error}"
    if "can't allocate memory" in ours["message"]:
        return f"OUT OF MEMORY instead of a check: {error}"
    if torch_says == "ok":
        return "FUZZER: torch.nn accepts this case, which the fuzzer calls malformed"
    return None


def describe(case: dict) -> str:
    """One line: the call, and its fault with the shape that was wanted."""
    c = case["config"]
    sizes = [f"I={c['input_size']}", f"H={c['hidden_size']}", f"L={c['num_layers']}"]
    sizes += [k for k in ("bias", "batch_first", "bidirectional") if c[k]]
    sizes += [f"proj={c['proj_size']}"] if c.get("proj_size") else []
    data = f"T={case['T']}" + ("" if case["layout"] == "unbatched" else f" B={case['B']}")
    data += f" lengths={case['lengths']}" if "lengths" in case else ""
    fault = dict(case["fault"])
    want = {**param_shapes(case["cell"], c), "input": input_shape(case)}
    if case["hx"]:
        want.update(state_shapes(case))
    if fault["kind"] in ("param", "state", "input"):
        fault["want"] = want[fault.get("name", "input")]
    return (
        f"{case['cell']} {case['api']} [{' '.join(sizes)}] {case['layout']} {data}"
        f"{' hx' if case['hx'] else ''}: {json.dumps(fault)}"
    )


def fuzz(worker: Worker, backend: str, family: str, examples: int) -> tuple[int, list[str]]:
    """Runs ``examples`` drawn cases; returns how many ran and a report line per failure."""
    ran, failures = [], []

    @settings(
        max_examples=examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.generate],  # every failure is collected, none shrunk
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    @given(cases(family, backend))
    def one_case(case: dict) -> None:
        ran.append(case)
        found = problem(worker, family, case)
        if found is not None:
            request = json.dumps({"case": case, "run": "ours"})
            failures.append(f"{found}\n    case: {describe(case)}\n    replay: {request}")

    one_case()
    return len(ran), failures


@pytest.mark.parametrize(
    "examples",
    [
        pytest.param(EXAMPLES, id="default"),
        pytest.param(SLOW_EXAMPLES, id="long", marks=pytest.mark.slow),
    ],
)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fuzz(backend, family, examples, worker):
    count, failures = fuzz(worker, backend, family, examples)
    assert count >= examples, f"the fuzzer ran {count} {family} cases, expected {examples}"
    assert not failures, f"{len(failures)} of {count} {family} cases failed on {backend}:\n" + (
        "\n".join(failures)
    )
