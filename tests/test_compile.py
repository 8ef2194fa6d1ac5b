"""torch.compile(fullgraph=True) traces our modules without a graph break (nn.LSTM breaks)."""

import subprocess
import sys

import torch

import rnnkernels


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnkernels.LSTM(4, 6, bidirectional=True, batch_first=True, proj_size=3)
        self.gru = rnnkernels.GRU(6, 5)
        self.indrnn = rnnkernels.IndRNN(5, 4, nonlinearity="tanh")
        self.rnn = rnnkernels.RNN(4, 3, num_layers=2, nonlinearity="relu", bidirectional=True)

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, h = self.gru(y)
        y, h = self.indrnn(y, h[:, :, :4].contiguous())
        y, h = self.rnn(y)
        return y.sum() + h.sum() + c.sum()


def test_fullgraph_compile_matches_eager():
    torch.manual_seed(0)
    model = Tagger()
    x = torch.randn(3, 5, 4, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss = compiled(x)
    grads = torch.autograd.grad(loss, [x, *model.parameters()])
    expected_loss = model(x)
    expected = torch.autograd.grad(expected_loss, [x, *model.parameters()])
    torch.testing.assert_close(loss, expected_loss)
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


def test_fullgraph_compile_with_inductor():
    torch.manual_seed(0)
    model = rnnkernels.LSTM(3, 4, num_layers=2)
    x = torch.randn(6, 2, 3, requires_grad=True)
    compiled = torch.compile(model, fullgraph=True)
    out, (h, c) = compiled(x)
    expected_out, (expected_h, expected_c) = model(x)
    torch.testing.assert_close(out, expected_out)
    torch.testing.assert_close(c, expected_c)
    grad = torch.autograd.grad(out.sum(), x)[0]
    expected_grad = torch.autograd.grad(expected_out.sum(), x)[0]
    torch.testing.assert_close(grad, expected_grad)


FRESH_PROCESS = """
import torch, rnnkernels
from torch.nn.utils.rnn import pack_padded_sequence
model = rnnkernels.LSTM(3, 5, num_layers=2)
compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
x = torch.randn(6, 4, 3, requires_grad=True)
packed = pack_padded_sequence(x, torch.tensor([6, 3, 5, 2]), enforce_sorted=False)
for input in (x, packed):
    out, (h, c) = compiled(input)  # the first call in this process is a traced one
    expected, (expected_h, _) = model(input)
    data = out.data if hasattr(out, "batch_sizes") else out
    expected = expected.data if hasattr(expected, "batch_sizes") else expected
    torch.testing.assert_close(data, expected)
    torch.testing.assert_close(h, expected_h)
"""


def test_fullgraph_compile_as_the_first_call_of_a_process():
    """Backend availability is probed on first use (it imports modules, which Dynamo cannot
    trace): compiling before any eager call, padded and packed input, in a fresh interpreter."""
    run = subprocess.run([sys.executable, "-c", FRESH_PROCESS], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
