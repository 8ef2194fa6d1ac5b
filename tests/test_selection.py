"""The backend selection: a thread's or asyncio task's own choice (set_backend), the process-wide
default (set_default_backend), and what compiled code follows."""

import asyncio
import contextvars
import threading
from collections.abc import Callable

import pytest
import torch

import rnnkernels
from rnnkernels import backends
from rnnkernels.ops.lstm import op as lstm_op

CPU_CALL = backends.LayerCall("gru", torch.device("cpu"), torch.float32)
WAIT_S = 10  # an event not set by then fails the test instead of hanging it


@pytest.fixture(autouse=True)
def default(monkeypatch):
    """Each test starts from the default "auto" and gives the process default back after."""
    monkeypatch.setattr(backends, "_default", backends.AUTO)


def in_new_thread(function: Callable[[], object]) -> object:
    """What ``function`` returns when run by a new thread (which has no choice of its own)."""
    result = []
    thread = threading.Thread(target=lambda: result.append(function()))
    thread.start()
    thread.join(WAIT_S)
    return result[0]


def test_a_with_block_is_local_to_its_thread():
    """Thread A enters a block, B enters one, A checks, B exits, A checks, A exits: each sees
    its own choice throughout, and each exit restores what that block replaced."""
    a_entered, b_entered, a_checked, b_exited = (threading.Event() for _ in range(4))
    seen = {}

    def a():
        with rnnkernels.set_backend("cpp"):
            a_entered.set()
            b_entered.wait(WAIT_S)
            seen["A, with B in its block"] = rnnkernels.get_backend()
            a_checked.set()
            b_exited.wait(WAIT_S)
            seen["A, after B's block"] = rnnkernels.get_backend()
        seen["A, after its block"] = rnnkernels.get_backend()

    def b():
        a_entered.wait(WAIT_S)
        with rnnkernels.set_backend("reference"):
            b_entered.set()
            a_checked.wait(WAIT_S)
            seen["B, with A in its block"] = rnnkernels.get_backend()
            seen["B resolves"] = backends.resolve(None, CPU_CALL)
        seen["B, after its block"] = rnnkernels.get_backend()
        b_exited.set()

    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert seen == {
        "A, with B in its block": "cpp",
        "B, with A in its block": "reference",
        "B resolves": "reference",
        "B, after its block": "auto",
        "A, after B's block": "cpp",
        "A, after its block": "auto",
    }
    assert backends._default == "auto"


def test_a_with_block_is_local_to_its_asyncio_task():
    """The same interleaving with two tasks of one event loop (one thread)."""

    async def main() -> dict[str, str]:
        a_entered, b_entered, a_checked, b_exited = (asyncio.Event() for _ in range(4))
        seen = {}

        async def a():
            with rnnkernels.set_backend("cpp"):
                a_entered.set()
                await b_entered.wait()
                seen["A, with B in its block"] = rnnkernels.get_backend()
                a_checked.set()
                await b_exited.wait()
                seen["A, after B's block"] = rnnkernels.get_backend()
            seen["A, after its block"] = rnnkernels.get_backend()

        async def b():
            await a_entered.wait()
            with rnnkernels.set_backend("reference"):
                b_entered.set()
                await a_checked.wait()
                seen["B, with A in its block"] = rnnkernels.get_backend()
            seen["B, after its block"] = rnnkernels.get_backend()
            b_exited.set()

        await asyncio.wait_for(asyncio.gather(a(), b()), WAIT_S)
        return seen

    assert asyncio.run(main()) == {
        "A, with B in its block": "cpp",
        "B, with A in its block": "reference",
        "B, after its block": "auto",
        "A, after B's block": "cpp",
        "A, after its block": "auto",
    }


def test_bare_calls_and_the_process_default():
    """A bare set_backend call selects for its own thread until changed; inside a block, until
    the block exits, which restores what the block replaced. set_default_backend reaches every
    thread without a choice of its own. Run in an empty context: a bare call would otherwise
    stay selected for the tests after this one."""

    def body():
        rnnkernels.set_backend("reference")
        assert rnnkernels.get_backend() == "reference"
        assert in_new_thread(rnnkernels.get_backend) == "auto"
        rnnkernels.set_default_backend("numba")
        assert rnnkernels.get_backend() == "reference"  # this thread's choice wins
        assert in_new_thread(rnnkernels.get_backend) == "numba"
        with rnnkernels.set_backend("cpp"):
            rnnkernels.set_backend("auto")  # a bare call inside a block
            assert rnnkernels.get_backend() == "auto"
        assert rnnkernels.get_backend() == "reference"

    contextvars.Context().run(body)
    assert rnnkernels.get_backend() == "numba"  # this thread (pytest's) made no choice


def lstm_kernels_that_ran(monkeypatch) -> list[str]:
    """The backends whose LSTM forward kernel runs from now on, in call order: the LSTM op's
    kernel lookup (ops/lstm/op.py) wrapped, not the kernels themselves (the cpp ones are
    torch.ops.rnnkernels_cpp's, which torch's own op tables read)."""
    ran = []
    lookup = lstm_op.kernels

    class Recording:
        def __init__(self, name: str) -> None:
            self.name, self.kernels = name, lookup(name, "lstm")

        def lstm_fwd(self, *args):
            ran.append(self.name)
            return self.kernels.lstm_fwd(*args)

    monkeypatch.setattr(lstm_op, "kernels", lambda name, cell: Recording(name))
    return ran


def test_compiled_model_follows_the_default_and_refuses_a_with_block(monkeypatch):
    """Dynamo guards on the process default, so changing it recompiles; it can neither read nor
    guard a thread's or task's set_backend choice, so a compiled call under a block that selects
    another backend raises instead of running the one it was traced with. backend= on the module
    wins over both, compiled or not."""
    if backends.why_unavailable("cpp"):
        pytest.skip(backends.why_unavailable("cpp"))
    torch.compiler.reset()  # compiled LSTM.forward of other tests: no recompile limit reached
    ran = lstm_kernels_that_ran(monkeypatch)
    x = torch.randn(5, 2, 3)
    compiled = torch.compile(rnnkernels.LSTM(3, 4), fullgraph=True, backend="aot_eager")
    compiled(x)  # auto: cpp
    rnnkernels.set_default_backend("reference")
    compiled(x)
    assert ran == ["cpp", "reference"]
    with rnnkernels.set_backend("cpp"):
        with pytest.raises(
            rnnkernels.BackendError,
            match="traced .* where the rnnkernels backend selection was 'reference', and runs "
            "where it is 'cpp'",
        ):
            compiled(x)
        named = rnnkernels.LSTM(3, 4, backend="reference")
        torch.compile(named, fullgraph=True, backend="aot_eager")(x)
    assert ran == ["cpp", "reference", "reference"]
