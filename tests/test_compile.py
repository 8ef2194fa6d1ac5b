"""torch.compile(fullgraph=True) traces our modules without a graph break (nn.LSTM breaks)."""

import torch

import rnnkernels


class Tagger(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = rnnkernels.LSTM(4, 6, bidirectional=True, batch_first=True, proj_size=3)
        self.gru = rnnkernels.GRU(6, 5)
        self.indrnn = rnnkernels.IndRNN(5, 4, nonlinearity="tanh")

    def forward(self, x):
        y, (h, c) = self.lstm(x)
        y, h = self.gru(y)
        y, h = self.indrnn(y, h[:, :, :4].contiguous())
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
