"""Our modules under torch.autocast (docs/design.md, "Mixed precision"): the output dtypes torch's
modules return under the same autocast (IndRNN: nn.RNN's), outputs and fp32 master-weight
gradients within TOLERANCES[("autocast", dtype)] of torch's own autocast run on every backend,
packed input, GradScaler, torch.compile(fullgraph=True), and the backend resolved for the fp32
kernels. The CUDA tests are marked ``gpu`` (skipped without a GPU)."""

import contextlib
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnnkernels
from rnnkernels import backends, dispatch
from rnnkernels.backends import resolve
from rnnkernels.functional import describe_call
from rnnkernels.modules import rnn_config
from rnnkernels.testing import EagerIndRNN, assert_close, grid, needs, torch_twin, value_id

I, H, P, T, B = 4, 6, 3, 7, 3
LENGTHS = [5, 7, 2]  # unsorted
DTYPES = [torch.bfloat16, torch.float16]
# LSTM with proj_size P is its own case: torch returns its c_n in another dtype than h_n.
CELLS = ["lstm", "lstm_proj", "gru", "rnn", "indrnn"]


def make(cell, device="cpu", backend=None, nonlinearity="tanh", **flags):
    """Our module for ``cell``, seeded. RNN's and IndRNN's numbers are compared with tanh: with
    relu, one rounding more or less flips a unit near zero on or off, and its gradient with it
    (measured for IndRNN: differences of 2 in bf16), whatever the backend."""
    torch.manual_seed(0)
    if cell == "indrnn":
        return rnnkernels.IndRNN(
            I, H, nonlinearity=nonlinearity, backend=backend, device=device, **flags
        )
    if cell == "rnn":
        return rnnkernels.RNN(
            I, H, nonlinearity=nonlinearity, backend=backend, device=device, **flags
        )
    if cell == "lstm_proj":
        flags["proj_size"] = P
    module = rnnkernels.GRU if cell == "gru" else rnnkernels.LSTM
    return module(I, H, backend=backend, device=device, **flags)


def torch_module(module):
    """torch's module of the same configuration and weights, for the output dtypes: nn.LSTM /
    nn.GRU, and for IndRNN nn.RNN (whose h = act(x W_ih^T + h W_hh^T + b) IndRNN is with a
    diagonal W_hh: IndRNN returns nn.RNN's dtypes)."""
    if not isinstance(module, rnnkernels.IndRNN):
        return torch_twin(module)
    weight = module.weight_ih_l0
    return nn.RNN(nonlinearity=module.nonlinearity, **rnn_config(module), device=weight.device)


def reference(module):
    """torch's computation of ``module`` with its own copy of the weights, for the numbers:
    nn.LSTM / nn.GRU, for IndRNN the eager loop (testing.EagerIndRNN)."""
    if isinstance(module, rnnkernels.IndRNN):
        return EagerIndRNN(copy.deepcopy(module))
    return torch_twin(module)


def eager_packed(module, x):
    """EagerIndRNN ``module``, which takes padded input only, on ``x`` packed with LENGTHS: each
    sequence alone over its own length, the outputs packed as torch packs them."""
    outputs, finals = [], []
    for b, length in enumerate(LENGTHS):
        y, h_n = module(x[:length, b : b + 1])
        outputs.append(F.pad(y, (0, 0, 0, 0, 0, T - length)))
        finals.append(h_n)
    y = pack_padded_sequence(torch.cat(outputs, 1), LENGTHS, enforce_sorted=False)
    return y, torch.cat(finals, 1)


def outputs_of(result):
    """[output data, *final states] of a module's return value."""
    output, states = result
    data = output.data if isinstance(output, PackedSequence) else output
    return [data, *(states if isinstance(states, tuple) else (states,))]


def autocast_run(module, packed, dtype, device="cpu", onednn=True):
    """``module`` on a fixed [T, B, I] input (packed with LENGTHS or not) under autocast, and a
    backward from fixed cotangents, drawn in fp32 whatever the output dtypes (so both sides
    backpropagate the same numbers), outside autocast as torch recommends. Returns (outputs,
    gradients of the padded input and of every parameter). ``onednn``: torch.backends.mkldnn on
    or off (torch's own runs)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g).to(device).requires_grad_()
    input = pack_padded_sequence(x, LENGTHS, enforce_sorted=False) if packed else x
    with onednn_flag(onednn), torch.autocast(device, dtype=dtype):
        if packed and isinstance(module, EagerIndRNN):
            outputs = outputs_of(eager_packed(module, x))
        else:
            outputs = outputs_of(module(input))
    loss = sum((o.float() * torch.randn(o.shape, generator=g).to(device)).sum() for o in outputs)
    return outputs, torch.autograd.grad(loss, [x, *module.parameters()])


def onednn_flag(enabled):
    """torch.backends.mkldnn off where ``enabled`` is False; else nothing (its flags context
    warns about TF32 each time it is entered)."""
    return contextlib.nullcontext() if enabled else torch.backends.mkldnn.flags(enabled=False)


# Whether oneDNN has an LSTM kernel in the dtype on this CPU: torch's LSTM on padded input runs
# oneDNN's kernel in the autocast dtype, which raises where there is none (fp16 needs
# AVX512-FP16: on Zen 4, for one, torch's LSTM fails under fp16 autocast).
ONEDNN_HAS = {
    torch.bfloat16: torch.ops.mkldnn._is_mkldnn_bf16_supported,
    torch.float16: torch.ops.mkldnn._is_mkldnn_fp16_supported,
}


def onednn_missing(error, cell, dtype):
    """Whether ``error`` is torch's LSTM finding no oneDNN kernel for ``dtype`` on this CPU."""
    missing = "could not create a primitive descriptor" in str(error)
    return missing and cell == "lstm" and not ONEDNN_HAS[dtype]()


def torchs_run(run, cell, dtype):
    """``run(onednn=True)``, torch's default; where torch's LSTM has no oneDNN kernel for the dtype
    (onednn_missing), ``run(onednn=False)``: torch's own step loop under the same autocast."""
    try:
        return run(onednn=True)
    except RuntimeError as error:
        if not onednn_missing(error, cell, dtype):
            raise
        return run(onednn=False)


# --- output dtypes --------------------------------------------------------------------------------

# padded, packed, batch_first, unbatched input; h0 given (fp32); the final states of a first call
# fed back into a second (torch returns some in the autocast dtype); the input in the autocast
# dtype (fp32 weights); the whole model in the autocast dtype.
FORMS = ["padded", "packed", "batch_first", "unbatched", "hx", "fed_back", "half_input", "half"]


def form_call(module, form, dtype):
    """A call of ``module`` in ``form`` under autocast ``dtype``: its outputs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(T, B, I, generator=g)
    if form == "batch_first":
        x = x.transpose(0, 1)
    elif form == "unbatched":
        x = x[:, 0]
    elif form == "packed":
        x = pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    elif form == "half_input":
        x = x.to(dtype)
    elif form == "half":
        module.to(dtype)
        x = x.to(dtype)
    hx = None
    if form == "hx":  # one layer, one direction
        lstm = isinstance(module, (nn.LSTM, rnnkernels.LSTM))
        sizes = [module.proj_size or H, H] if lstm else [H]
        states = tuple(torch.randn(1, B, size, generator=g) for size in sizes)
        hx = states if lstm else states[0]
    with torch.autocast("cpu", dtype=dtype):
        if form == "fed_back":
            _, hx = module(x)
        return outputs_of(module(x, hx))


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("dtype", DTYPES, ids=value_id)
@pytest.mark.parametrize(
    "cell", ["lstm", "lstm_proj", "gru", "rnn-relu", "rnn-tanh", "indrnn-relu", "indrnn-tanh"]
)
def test_output_dtypes_are_torchs(cell, dtype, form):
    """Per cell, autocast dtype and input form, our outputs come in the dtypes torch's module
    returns under the same autocast (IndRNN: nn.RNN's)."""
    cell, _, nonlinearity = cell.partition("-")
    ours = make(cell, nonlinearity=nonlinearity or "tanh", batch_first=form == "batch_first")
    theirs = torch_module(ours)
    got = [o.dtype for o in form_call(ours, form, dtype)]
    try:
        expected = [o.dtype for o in form_call(theirs, form, dtype)]
    except RuntimeError as error:
        if not onednn_missing(error, cell, dtype):
            raise
        expected = [dtype] * 3  # what oneDNN's LSTM returns where it has the kernel
    assert got == expected


# --- numbers --------------------------------------------------------------------------------------

NUMBERS = grid(
    {"cell": CELLS, "dtype": DTYPES, "packed": [False, True]},
    together=[("cell", "dtype")],
    ids={"packed": lambda p: "packed" if p else "padded"},
)


@pytest.mark.parametrize("cell, dtype, packed", NUMBERS)
def test_matches_torch_autocast(backend, cell, dtype, packed):
    """Two layers, bidirectional: outputs, final states and the gradients of the input and of
    every (fp32) parameter within TOLERANCES[("autocast", dtype)] of torch's run under the same
    autocast; the parameters' gradients are fp32."""
    needs(backend, cell.partition("_")[0])  # the kernels run in fp32 under autocast
    ours = make(cell, backend=backend, num_layers=2, bidirectional=True)
    theirs = reference(ours)
    got, got_grads = autocast_run(ours, packed, dtype)
    expected, expected_grads = torchs_run(
        lambda onednn: autocast_run(theirs, packed, dtype, onednn=onednn), cell, dtype
    )
    key = ("autocast", dtype)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a.float(), b.float(), f"output {k}", key=key)
    names = ["input", *(name for name, _ in ours.named_parameters())]
    for name, a, b in zip(names, got_grads, expected_grads):
        assert a.dtype == torch.float32, name
        assert_close(a, b, f"grad of {name}", key=key)


def test_backend_is_resolved_for_the_fp32_kernels():
    """Under autocast the kernels get fp32 whatever the model's dtype: the call is described, and
    its backend chosen, as an fp32 call; auto takes a compiled backend, never torch's (whose
    autocast path the table did not time: dispatch.torch_gives_up), and the fp16 LSTM call that
    auto gave to torch's failing oneDNN kernel before runs."""
    model = rnnkernels.LSTM(256, 256)
    x = torch.randn(100, 32, 256)
    with torch.no_grad():
        for dtype in DTYPES:
            with torch.autocast("cpu", dtype=dtype):
                call = describe_call(model, x)
                assert call.dtype == torch.float32
                assert dispatch.torch_gives_up(call) is not None
                assert resolve("auto", call) not in ("torch", "reference")
                assert model(x)[0].dtype == dtype
            assert dispatch.torch_gives_up(describe_call(model, x)) is None
        half = rnnkernels.LSTM(4, 6).bfloat16()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert describe_call(half, torch.randn(3, 2, 4, dtype=torch.bfloat16)).dtype == (
                torch.float32
            )


def test_float64_is_left_alone():
    """Autocast does not cast fp64 (nor does it torch's modules): an fp64 model runs as without
    it, bit for bit."""
    model = make("lstm", backend="cpp").double()
    x = torch.randn(T, B, I, dtype=torch.float64)
    expected = outputs_of(model(x))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = outputs_of(model(x))
    for a, b in zip(got, expected):
        assert a.dtype == torch.float64
        assert torch.equal(a, b)


def test_check_mixes_dtypes_only_where_autocast_does():
    """The one check accepts, under autocast for the input's device, the mixes torch's modules
    accept there (tested above: input or h0 in the autocast dtype); elsewhere it refuses them as
    before, and an fp64 input against fp32 weights is refused under autocast too (autocast does
    not cast fp64)."""
    model = rnnkernels.LSTM(I, H)
    x = torch.randn(T, B, I)
    half = torch.zeros(1, B, H, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match=r"hidden\[0\] dtype \(torch.bfloat16\) does not match"):
        model(x, (half, half))
    with pytest.raises(ValueError, match="RNN input dtype"):
        model(x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(ValueError, match=r"RNN input dtype \(torch.float64\)"):
            model(x.double())
    # CUDA's autocast flag (what torch.is_autocast_enabled() reads) says nothing of CPU tensors
    torch.set_autocast_enabled("cuda", True)
    try:
        with pytest.raises(ValueError, match="RNN input dtype"):
            model(x.bfloat16())
    finally:
        torch.set_autocast_enabled("cuda", False)


# --- training -------------------------------------------------------------------------------------


def scaler_step(module, input, device, onednn=True):
    """One fp16 AMP step as torch's recipe writes it: forward and loss under autocast, the scaled
    loss's backward, unscale, SGD step, update. Returns (the parameters after the step, their
    unscaled gradients, the scale after the update)."""
    optimizer = torch.optim.SGD(module.parameters(), lr=0.5)
    scaler = torch.amp.GradScaler(device)
    with onednn_flag(onednn), torch.autocast(device, dtype=torch.float16):
        loss = (outputs_of(module(input))[0].float() ** 2).mean()
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    grads = [p.grad.clone() for p in module.parameters()]
    scaler.step(optimizer)
    scaler.update()
    return [p.detach().clone() for p in module.parameters()], grads, scaler.get_scale()


@pytest.mark.parametrize("cell", CELLS)
def test_grad_scaler_step_on_cpu(cell):
    """torch.amp.GradScaler("cpu") with fp16 autocast trains a step as it does torch's module:
    fp32 gradients, no overflow found (both scales stay at their initial 2**16), the gradients
    and the parameters after the step within the autocast tolerance of torch's."""
    ours = make(cell, num_layers=2)
    theirs = reference(ours)
    x = torch.randn(T, B, I)
    got, got_grads, got_scale = scaler_step(ours, x, "cpu")
    expected, expected_grads, expected_scale = torchs_run(
        lambda onednn: scaler_step(theirs, x, "cpu", onednn), cell, torch.float16
    )
    assert got_scale == expected_scale == 2.0**16  # no inf found: the step was taken
    for (name, _), a, b, ga, gb in zip(
        ours.named_parameters(), got, expected, got_grads, expected_grads
    ):
        assert ga.dtype == a.dtype == torch.float32, name
        assert_close(ga, gb, f"grad of {name}", key=("autocast", torch.float16))
        assert_close(a, b, name, key=("autocast", torch.float16))


class Stack(nn.Module):
    """Every cell, projection and both directions, and states handed on between them."""

    def __init__(self):
        super().__init__()
        self.lstm = rnnkernels.LSTM(I, H, bidirectional=True, proj_size=P)
        self.gru = rnnkernels.GRU(2 * P, H)
        self.indrnn = rnnkernels.IndRNN(H, H, nonlinearity="tanh")

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, h = self.gru(y)
        y, h = self.indrnn(y, h)
        return y, h, c


@pytest.mark.parametrize("where", ["inside", "around"])
def test_compile_fullgraph_under_autocast(where):
    """torch.compile(fullgraph=True) traces the autocast path, autocast entered inside the
    compiled function or around the compiled model: outputs (and their dtypes) and parameter
    gradients bit for bit as eager. The input's gradient within the autocast tolerance: eager
    autograd sums the two directions' bf16 gradients of the one cached bf16 copy of x in bf16,
    the compiled graph after casting them to fp32 (measured: 0.3% of its largest element)."""
    torch.manual_seed(0)
    model = Stack()
    x = torch.randn(T, B, I, requires_grad=True)

    def inside(x):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return model(x)

    compiled = torch.compile(inside if where == "inside" else model, fullgraph=True,
                             backend="aot_eager")  # fmt: skip
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=where == "around"):
        got = compiled(x)
    expected = inside(x)
    assert [o.dtype for o in got] == [o.dtype for o in expected]
    assert [o.dtype for o in expected] == [torch.bfloat16, torch.bfloat16, torch.float32]
    leaves = [x, *model.parameters()]
    got_grads = torch.autograd.grad(sum(o.float().sum() for o in got), leaves)
    expected_grads = torch.autograd.grad(sum(o.float().sum() for o in expected), leaves)
    for a, b in zip([*got, *got_grads[1:]], [*expected, *expected_grads[1:]]):
        assert torch.equal(a, b)
    assert_close(got_grads[0], expected_grads[0], "grad of x", key=("autocast", torch.bfloat16))


# --- CUDA (gpu) -----------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("packed", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("dtype", DTYPES, ids=value_id)
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_cuda_matches_torch_autocast(backend, cell, dtype, packed):
    """On CUDA: the output dtypes of torch's module under the same autocast (cuDNN's autocast
    wrapper: fp16 for every cell, whatever the autocast dtype), and the numbers of torch's run
    (IndRNN: the eager loop's) within the autocast tolerance. The tolerances were measured on
    CPU; this test is what checks them on a GPU."""
    ours = make(cell, device="cuda", backend=backend, num_layers=2, bidirectional=True)
    got, got_grads = autocast_run(ours, packed, dtype, "cuda")
    torchs, _ = autocast_run(torch_module(ours), packed, dtype, "cuda")
    expected, expected_grads = autocast_run(reference(ours), packed, dtype, "cuda")
    assert [o.dtype for o in got] == [o.dtype for o in torchs]
    key = ("autocast", dtype)
    for k, (a, b) in enumerate(zip(got, expected)):
        assert_close(a.float(), b.float(), f"output {k}", key=key)
    for a, b in zip(got_grads, expected_grads):
        assert a.dtype == torch.float32
        assert_close(a, b, "gradient", key=key)


@pytest.mark.gpu
@pytest.mark.parametrize("cell", CELLS)
def test_grad_scaler_step_on_cuda(cell):
    """torch.amp.GradScaler("cuda") with fp16 autocast: a step as torch's module takes it."""
    ours = make(cell, device="cuda", backend="triton", num_layers=2)
    theirs = reference(ours)
    x = torch.randn(T, B, I, device="cuda")
    got, got_grads, got_scale = scaler_step(ours, x, "cuda")
    expected, expected_grads, expected_scale = scaler_step(theirs, x, "cuda")
    assert got_scale == expected_scale == 2.0**16
    for a, b, ga, gb in zip(got, expected, got_grads, expected_grads):
        assert ga.dtype == torch.float32
        assert_close(ga, gb, "gradient", key=("autocast", torch.float16))
        assert_close(a, b, "parameter", key=("autocast", torch.float16))


@pytest.mark.parametrize("backend", ["reference", "numba", "cpp"])
def test_backward_inside_the_autocast_region_runs_without_it(backend):
    """loss.backward() called inside the autocast block (torch advises against it, people do it)
    gives the gradients of a backward called after it: the op's backward runs with autocast off,
    as torch.amp.custom_bwd runs one (ops/layer_op.py)."""
    if backends.why_unavailable(backend):
        pytest.skip(backends.why_unavailable(backend))
    torch.manual_seed(0)
    model = rnnkernels.LSTM(8, 16, backend=backend)
    x = torch.randn(6, 3, 8)
    grads = []
    for inside in (False, True):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x)[0].float().pow(2).sum()
            if inside:
                loss.backward()
        if not inside:
            loss.backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    for after, inside in zip(*grads):
        assert torch.equal(after, inside)
