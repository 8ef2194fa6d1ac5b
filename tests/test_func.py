"""torch.func through our modules (docs/design.md §3, "Higher-order gradients and torch.func"):
grad, jacrev, vmap over grad, grad of grad and vmap of the forward through functional_call,
padded and packed, against autograd and per-sample loops; forward mode raises, in our words."""

import pytest
import torch
from torch.func import functional_call, grad, hessian, jacfwd, jacrev, jvp, vmap
from torch.nn.utils.rnn import pack_padded_sequence

import rnnkernels
from rnnkernels.testing import assert_close, needs

I, H, T, B = 2, 3, 4, 3
MODULES = {
    "lstm": lambda **kw: rnnkernels.LSTM(I, H, **kw),
    "lstm-proj": lambda **kw: rnnkernels.LSTM(I, H, proj_size=2, **kw),
    "gru": lambda **kw: rnnkernels.GRU(I, H, **kw),
    "indrnn": lambda **kw: rnnkernels.IndRNN(I, H, nonlinearity="tanh", **kw),
    "rnn": lambda **kw: rnnkernels.RNN(I, H, **kw),
}
# torch's per-sample fallback for an op without a batching rule warns so: our ops have one
pytestmark = pytest.mark.filterwarnings("error:There is a performance drop")


def make(name, backend, **kw):
    needs(backend, name.split("-")[0], torch.float64)
    torch.manual_seed(0)
    module = MODULES[name](backend=backend, **kw).double()
    params = {n: p.detach() for n, p in module.named_parameters()}
    return module, params


def loss_of(module):
    """A scalar of the output and every final state, a function of (params, input)."""

    def loss(params, x):
        output, states = functional_call(module, params, (x,))
        states = states if isinstance(states, tuple) else (states,)
        output = output.data if hasattr(output, "batch_sizes") else output
        return (output.sin()).sum() + sum((s * s).sum() for s in states)

    return loss


def autograd_grads(f, params, x, create_graph=False):
    """torch.autograd.grad of f(params, x) with respect to every parameter and x."""
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    x = x.clone().requires_grad_()
    grads = torch.autograd.grad(f(leaves, x), [*leaves.values(), x], create_graph=create_graph)
    return dict(zip(leaves, grads[:-1])), grads[-1]


def inputs(n=None):
    shape = (T, B, I) if n is None else (n, T, B, I)
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))


@pytest.mark.parametrize("name", list(MODULES))
def test_grad_matches_autograd(backend, name):
    module, params = make(name, backend, num_layers=2, bidirectional=True)
    x, loss = inputs(), loss_of(module)
    got_params, got_x = grad(loss, argnums=(0, 1))(params, x)
    expected_params, expected_x = autograd_grads(loss, params, x)
    assert_close(got_x, expected_x, "input")
    for n in params:
        assert_close(got_params[n], expected_params[n], n)


@pytest.mark.parametrize("name", list(MODULES))
def test_jacrev_matches_autograd_jacobian(name):
    module, params = make(name, "cpp")
    x = inputs()

    def output(x):
        return functional_call(module, params, (x,))[0]

    got = jacrev(output)(x)
    assert_close(got, torch.autograd.functional.jacobian(output, x))


@pytest.mark.parametrize("name", list(MODULES))
def test_vmap_of_grad_gives_per_sample_gradients(name):
    module, params = make(name, "numba")
    xs, loss = inputs(n=3), loss_of(module)
    got = vmap(grad(loss), in_dims=(None, 0))(params, xs)
    for k, x in enumerate(xs):
        expected, _ = autograd_grads(loss, params, x)
        for n in params:
            assert_close(got[n][k], expected[n], f"sample {k} {n}")


@pytest.mark.parametrize("name", list(MODULES))
def test_grad_of_grad_matches_double_backward(name):
    """Nested grad transforms: the inner one's backward differentiated by the outer one."""
    module, params = make(name, "cpp", num_layers=2)
    x, loss = inputs(), loss_of(module)

    def grad_norm(x):
        return grad(loss, argnums=1)(params, x).pow(2).sum()

    x_leaf = x.clone().requires_grad_()
    (first,) = torch.autograd.grad(loss(params, x_leaf), x_leaf, create_graph=True)
    (expected,) = torch.autograd.grad(first.pow(2).sum(), x_leaf)
    assert_close(grad(grad_norm)(x), expected)


def test_packed_input_through_grad_jacrev_and_vmap():
    """PackedSequence rows as the transformed input (batch sizes fixed): _ToPadded / _ToRows."""
    module, params = make("lstm", "cpp", num_layers=2, bidirectional=True)
    packed = pack_padded_sequence(inputs(), torch.tensor([4, 1, 3]), enforce_sorted=False)
    loss = loss_of(module)

    def packed_loss(params, data):
        return loss(params, packed._replace(data=data))

    got_params, got_data = grad(packed_loss, argnums=(0, 1))(params, packed.data)
    expected_params, expected_data = autograd_grads(packed_loss, params, packed.data)
    assert_close(got_data, expected_data, "data")
    for n in params:
        assert_close(got_params[n], expected_params[n], n)

    def output(data):
        return functional_call(module, params, (packed._replace(data=data),))[0].data

    assert_close(
        jacrev(output)(packed.data), torch.autograd.functional.jacobian(output, packed.data)
    )
    datas = torch.randn(2, *packed.data.shape, dtype=torch.float64)
    per_sample = vmap(grad(packed_loss), in_dims=(None, 0))(params, datas)
    for k, data in enumerate(datas):
        expected, _ = autograd_grads(packed_loss, params, data)
        for n in params:
            assert_close(per_sample[n][k], expected[n], f"sample {k} {n}")


@pytest.mark.parametrize("name", list(MODULES))
def test_vmap_of_forward_matches_a_loop(backend, name):
    module, params = make(name, backend)
    xs = inputs(n=2)
    outputs, states = vmap(lambda x: functional_call(module, params, (x,)))(xs)
    for k, x in enumerate(xs):
        expected, expected_states = module(x)
        assert_close(outputs[k], expected)
        for a, b in zip(torch.utils._pytree.tree_leaves(states),
                        torch.utils._pytree.tree_leaves(expected_states)):  # fmt: skip
            assert_close(a[k], b)


@pytest.mark.parametrize("name", ["lstm-proj", "gru", "indrnn", "rnn"])
def test_vmap_over_weights_matches_a_loop(name):
    """An ensemble: vmapped weights (stacked modules) run one call per member."""
    modules = [make(name, "cpp")[0] for _ in range(2)]
    for k, module in enumerate(modules):
        with torch.no_grad():
            for p in module.parameters():
                p.add_(0.1 * k)
    params, _ = torch.func.stack_module_state(modules)
    x = inputs()

    def run(params):
        return functional_call(modules[0], params, (x,))

    outputs, states = vmap(run)(params)
    for k, module in enumerate(modules):
        expected, expected_states = module(x)
        assert_close(outputs[k], expected)
        for a, b in zip(torch.utils._pytree.tree_leaves(states),
                        torch.utils._pytree.tree_leaves(expected_states)):  # fmt: skip
            assert_close(a[k], b)


@pytest.mark.parametrize(
    "transform",
    [
        lambda f, x: jvp(f, (x,), (torch.ones_like(x),)),
        lambda f, x: jacfwd(f)(x),
        lambda f, x: hessian(lambda x: f(x).sum())(x),
    ],
    ids=["jvp", "jacfwd", "hessian"],
)
def test_forward_mode_raises_saying_what_works(transform):
    """No forward-mode derivative: an error naming what works, never zero tangents."""
    module, params = make("gru", "cpp")

    def output(x):
        return functional_call(module, params, (x,))[0]

    # the first op: the layer op, or on the cpp backend at large sizes its input GEMM
    # (rnnkernels::linear, ops/linear.py)
    with pytest.raises(
        NotImplementedError, match=r"rnnkernels::(gru_fwd|linear) has no forward-mode"
    ):
        transform(output, inputs())
    with torch.autograd.forward_ad.dual_level():
        dual = torch.autograd.forward_ad.make_dual(inputs(), torch.ones(T, B, I).double())
        with pytest.raises(NotImplementedError, match=r"jacrev\(jacrev\(f\)\).*unconvert"):
            module(dual)
