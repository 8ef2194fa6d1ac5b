"""Probe of the kernels' grid-wide step barrier (triton_common.step_barrier) on a GPU: a toy
recurrence whose units are split across SPLIT programs, each step reading every unit the other
programs wrote in the step before. Checks the result against torch and the arrival count, and
times microseconds per step with and without the barrier.

    python tools/gpu_barrier_probe.py
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from rnnkernels.ops.triton_common import step_barrier


@triton.jit
def _probe_kernel(state, counter, T, SPLIT: tl.constexpr, N: tl.constexpr, CG: tl.constexpr):
    """state [2, SPLIT * N]: h_t[j] = 0.5 * h_{t-1}[(j + 1) % M] + 1, program p owns units
    p * N ... p * N + N - 1."""
    M: tl.constexpr = SPLIT * N
    p = tl.program_id(0)
    own = p * N + tl.arange(0, N)
    src = (own + 1) % M
    for s in range(T):
        parity = s % 2
        h_prev, h_next = state + parity * M, state + (1 - parity) * M
        if CG:
            h = tl.load(h_prev + src, cache_modifier=".cg")
        else:
            h = tl.load(h_prev + src)
        tl.store(h_next + own, 0.5 * h + 1)
        step_barrier(counter, (s + 1) * SPLIT, SPLIT)


def run(split: int, n: int, T: int, cg: bool, cooperative: bool) -> tuple[float, float, int]:
    M = split * n
    h0 = torch.randn(M, device="cuda")
    state = torch.stack([h0, h0]).contiguous()
    counter = torch.zeros(1, dtype=torch.int32, device="cuda")
    _probe_kernel[(split,)](state, counter, T, SPLIT=split, N=n, CG=cg,
                            launch_cooperative_grid=cooperative)  # fmt: skip
    torch.cuda.synchronize()
    h = h0.double()
    for _ in range(T):
        h = 0.5 * torch.roll(h, -1) + 1
    err = (state[T % 2].double() - h).abs().max().item()

    def once():
        state.copy_(torch.stack([h0, h0]))
        counter.zero_()
        _probe_kernel[(split,)](state, counter, T, SPLIT=split, N=n, CG=cg,
                                launch_cooperative_grid=cooperative)  # fmt: skip

    ms = triton.testing.do_bench(once, warmup=50, rep=200, return_mode="median")
    return err, ms * 1000 / T, int(counter.item())


def main() -> None:
    props = torch.cuda.get_device_properties(0)
    print(props.name, "SMs", props.multi_processor_count)
    print("split    N      T  cg coop   max err  us/step  arrivals")
    for split, cg, coop in [(1, False, False), (2, True, True), (16, True, True), (48, True, True),
                            (96, True, True), (132, True, True), (48, False, True),
                            (48, True, False)]:  # fmt: skip
        for T in (1000, 4000):
            try:
                err, us, arrivals = run(split, 32, T, cg, coop)
                ok = "ok" if err < 1e-5 and arrivals == (T * split if split > 1 else 0) else "BAD"
                row = f"{split:5} {32:4} {T:6} {cg:3d} {coop:4d}"
                print(f"{row} {err:9.2e} {us:8.3f} {arrivals:9} {ok}")
            except Exception as e:  # noqa: BLE001 - a probe: report and go on
                print(f"{split:5} {32:4} {T:6} {cg:3d} {coop:4d} failed: {type(e).__name__}: {e}")


if __name__ == "__main__":
    main()
