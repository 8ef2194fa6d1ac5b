"""Building the providers of one shape, and measuring them: time, peak memory, the machine's GEMM
rate and description. torch is imported inside the functions, never at import time."""

from __future__ import annotations

import contextlib
import copy
import os
import platform
import subprocess
import sys
import time

from rnnkernels.bench.shapes import Shape


def build_case(shape: Shape, dtype, backends: list[str], seed: int = 0, device: str = "cpu"):
    """The providers' modules (torch twin first) sharing one set of weights, and the input."""
    import torch
    from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

    import rnnkernels
    from rnnkernels.testing import torch_twin

    torch.manual_seed(seed)
    common = dict(
        num_layers=shape.layers, bidirectional=shape.bidirectional, dtype=dtype, device=device
    )
    if shape.cell == "lstm":
        ours = rnnkernels.LSTM(shape.input_size, shape.H, proj_size=shape.proj, **common)
    elif shape.cell == "gru":
        ours = rnnkernels.GRU(shape.input_size, shape.H, **common)
    elif shape.cell == "rnn":
        ours = rnnkernels.RNN(shape.input_size, shape.H, **common)
    else:
        ours = rnnkernels.IndRNN(shape.input_size, shape.H, **common)
    modules = {"torch": torch_twin(ours)}
    for name in backends:
        modules[name] = copy.deepcopy(ours)
        modules[name].backend = name
    x = torch.randn(shape.T, shape.B, shape.input_size, dtype=dtype, device=device)
    if shape.packed:
        p = pack_padded_sequence(x, torch.tensor(shape.lengths()), enforce_sorted=False)
        # Rebuilt around a leaf so backward ends at the packed data (no graph kept between reps).
        x = PackedSequence(
            p.data.requires_grad_(), p.batch_sizes, p.sorted_indices, p.unsorted_indices
        )
    else:
        x.requires_grad_()
    return modules, x


def clear_grads(module, x) -> None:
    """Drops the gradients of ``x`` (or its packed data) and of every parameter of ``module``."""
    from torch.nn.utils.rnn import PackedSequence

    (x.data if isinstance(x, PackedSequence) else x).grad = None
    for p in module.parameters():
        p.grad = None


def make_call(module, x, mode: str):
    """A no-argument callable running one step of ``mode`` on ``module``: ``fwd`` under
    ``torch.no_grad``; ``fwdbwd`` drops old gradients, runs forward and backpropagates
    ``output.sum() + sum of the final states`` into the input and every parameter."""
    import torch
    from torch.nn.utils.rnn import PackedSequence

    def fwd() -> None:
        with torch.no_grad():
            module(x)

    def fwdbwd() -> None:
        clear_grads(module, x)
        out, state = module(x)
        out = out.data if isinstance(out, PackedSequence) else out
        states = state if isinstance(state, tuple) else (state,)
        (out.sum() + sum(s.sum() for s in states)).backward()

    return fwd if mode == "fwd" else fwdbwd


def _timer(device: str):
    """A function ``fn -> seconds``. On CUDA: synchronize (so earlier work is not counted), record
    an event, run, record an event, wait for it; the time between the events includes any GPU
    idle time spent waiting for the host to launch kernels, as a user would see it."""
    if device != "cuda":

        def wall(fn) -> float:
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        return wall
    import torch

    def events(fn) -> float:
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3  # elapsed_time is in ms

    return events


def time_providers(
    calls: dict, reps: int, warmup: int, device: str = "cpu"
) -> tuple[dict, dict, dict]:
    """Warm up each provider, then alternate them (a, b, ..., a, b, ...) for ``reps`` rounds.
    Returns (times_s, notes, first_s): ``first_s`` is each provider's first call in this run
    (the first warmup call, or the first timed one without warmup), which includes one-time
    costs such as a JIT compile or loading compiled kernels from a cache, and is kept out of the
    steady-state times. A provider that raises gets a note instead of times: "skipped:
    <reason>" for a BackendError (the backend cannot run this), "failed: <error>" otherwise."""
    from rnnkernels import BackendError

    timer = _timer(device)
    notes, first = {}, {}
    for name, fn in calls.items():
        try:
            if warmup:
                first[name] = timer(fn)
            for _ in range(warmup - 1):
                fn()
        except BackendError as e:
            notes[name] = f"skipped: {e}"
        except Exception as e:  # a benchmark run reports a failing provider and goes on
            notes[name] = f"failed: {type(e).__name__}: {e}".splitlines()[0]
            _release(device)
    live = [n for n in calls if n not in notes]
    times = {n: [] for n in live}
    for _ in range(reps):
        for name in live:
            times[name].append(timer(calls[name]))
    for name in live:
        if name not in first and times[name]:
            first[name] = times[name][0]
    return times, notes, {n: first[n] for n in live if n in first}


def _release(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.empty_cache()


@contextlib.contextmanager
def _quiet_fd2():
    """Silences file descriptor 2 (the profiler's C++ start/stop log lines go there)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def peak_memory(fn, device: str, before=None) -> int | None:
    """Peak bytes held by tensors allocated during one call of ``fn`` (beyond what existed before
    it), after ``before()`` (which drops old gradients, so both devices count the same thing).

    CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus the
    bytes allocated at the start. CPU: torch's CPU allocator reports every allocation and free to
    the profiler under ``profile_memory=True``; the running sum of those events, in time order,
    peaks at the answer. Memory a backend takes outside torch's allocator (malloc inside a
    library, numpy arrays) is not counted on CPU. None if it cannot be measured."""
    import torch

    if before is not None:
        before()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.autograd.profiler import profile

    with _quiet_fd2(), profile(profile_memory=True) as prof:
        fn()
    try:
        events = [e for e in prof.kineto_results.events() if e.name() == "[memory]"]
    except AttributeError:  # a torch whose profiler keeps its results elsewhere
        return None
    held = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):
        if str(e.device_type()).endswith("CPU"):  # DeviceType.CPU
            held += e.nbytes()
            peak = max(peak, held)
    return peak


def peak_rate(dtype, device: str = "cpu", reps: int = 5) -> tuple[float, str]:
    """The rate the "% peak" column divides by, in FLOP/s, and what it is: the best of ``reps``
    measurements each (the best, not the median, so background load distorts it less).

    CPU, float32: the cores' FMA rate on torch's threads (``torch.ops.rnnkernels_cpp.fma_rate``,
    csrc/cpu/peak.cpp), where the C++ extension is built; a large matmul is no ceiling there (on a
    2-vCPU Zen 4, MKL's sgemm ran at 95-150 GFLOP/s and torch's LSTM at 182). Else, and for other
    dtypes, the best of torch.matmul (MKL on x86 CPUs) and oneDNN's matmul
    (``torch.ops.mkldnn._linear_pointwise``; not float64) on 2048 x 2048 operands; CUDA:
    torch.matmul on 8192 x 8192 operands."""
    import torch

    from rnnkernels import backends

    if device == "cpu" and dtype == torch.float32 and backends.why_unavailable("cpp") is None:
        backends.kernels("cpp", "lstm")  # loads the extension, which registers fma_rate
        rate = max(torch.ops.rnnkernels_cpp.fma_rate(1 << 21) for _ in range(reps))
        if rate > 0:
            return rate, f"FMA peak on {torch.get_num_threads()} thread(s)"
    # CPU float16: torch's GEMM is not vectorised (~10 GFLOP/s), so a smaller product
    n = 8192 if device == "cuda" else 1024 if dtype == torch.float16 else 2048
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    products = {"torch.matmul": lambda: torch.matmul(a, b)}
    if device == "cpu" and dtype != torch.float64 and torch.backends.mkldnn.is_available():
        products["oneDNN matmul"] = lambda: torch.ops.mkldnn._linear_pointwise(
            a, b, None, "none", [], ""
        )
    timer = _timer(device)
    rates = {}
    for name, product in products.items():
        for _ in range(2 if device == "cuda" else 1):
            timer(product)
        rates[name] = 2 * n**3 / min(timer(product) for _ in range(reps))
    best = max(rates, key=rates.get)
    return rates[best], f"{best} {n}x{n}"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(
            ["git", "-C", here, "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def machine_info(device: str = "cpu") -> dict:
    """The machine and versions: CPU model, cores, threads, torch, python, and on CUDA the GPU,
    CUDA/cuDNN versions and the TF32 switches (cuDNN RNNs use TF32 for fp32 when allowed)."""
    import torch

    import rnnkernels

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "device": device,
        "cpu": cpu,
        "cores": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "rnnkernels": rnnkernels.__version__,
        "commit": _git_commit(),
        "platform": platform.platform(),
        "loadavg": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "gpu": None,
        "cuda": None,
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_capability=f"{props.major}.{props.minor}",
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
            cudnn_allow_tf32=torch.backends.cudnn.allow_tf32,
            matmul_allow_tf32=torch.backends.cuda.matmul.allow_tf32,
        )
    return info
