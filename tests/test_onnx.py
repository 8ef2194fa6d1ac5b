"""ONNX export (rnnkernels/onnx.py): models holding our LSTM / GRU / RNN / IndRNN exported with both
of torch's exporters, run by onnxruntime at another T than the export's, against eager within the
fp32 bar; the ONNX operators each case emits; the clear errors where a case has no ONNX form.
The flag grid's default run is a pairwise covering subset (testing.grid); ``-m slow`` runs it
whole."""

import copy
import io
import itertools
import re
import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

import rnnkernels
from rnnkernels.testing import assert_close, grid

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter's translations

I, H, P, B = 3, 5, 2, 4
T_EXPORT, T_RUN = 5, 7  # the model is exported at one T and run at another
LENGTHS = {  # per T: unsorted, for enforce_sorted=False; sorted descending they serve the rest
    T_EXPORT: [5, 2, 4, 1],
    T_RUN: [3, 7, 1, 6],
}
# The layouts of the input: padded time-major, batch-first, unbatched, and packed (from padded
# time-major input and lengths inside the model, as users write it) sorted or not.
PADDED = ["padded", "batch_first", "unbatched"]
PACKED = ["packed_sorted", "packed_unsorted"]
CELLS = ["lstm", "lstm_proj", "gru", "rnn", "indrnn"]  # rnn: relu (rnn_tanh: its own test)


class Exported(nn.Module):
    """What users export: the recurrent module called on its input (packed from lengths when the
    layout is packed), returning the output and every final state."""

    def __init__(self, rnn: nn.Module, layout: str) -> None:
        super().__init__()
        self.rnn, self.layout = rnn, layout

    def forward(self, x, lengths=None, h0=None, c0=None):
        states = [h for h in (h0, c0) if h is not None]
        hx = None if not states else tuple(states) if len(states) == 2 else states[0]
        if lengths is None:
            y, h = self.rnn(x, hx)
        else:
            packed = pack_padded_sequence(x, lengths, enforce_sorted=self.layout == "packed_sorted")
            y, h = self.rnn(packed, hx)
            y = pad_packed_sequence(y, total_length=x.shape[0])[0]
        return (y, *h) if isinstance(h, tuple) else (y, h)


def make_rnn(cell, num_layers=1, bidirectional=False, bias=True, batch_first=False):
    args = (I, H, num_layers)
    if cell == "indrnn":
        rnn = rnnkernels.IndRNN(*args, "relu", bias, batch_first, 0.0, bidirectional,
                                recurrent_max_abs=0.9)  # fmt: skip
        with torch.no_grad():  # u over [-1.5, 1.5] so the clamp bites
            for name, p in rnn.named_parameters():
                if name.startswith("weight_hh"):
                    p.uniform_(-1.5, 1.5)
        return rnn
    if cell == "gru":
        return rnnkernels.GRU(*args, bias, batch_first, 0.0, bidirectional)
    if cell.startswith("rnn"):
        nonlinearity = "tanh" if cell == "rnn_tanh" else "relu"
        return rnnkernels.RNN(*args, nonlinearity, bias, batch_first, 0.0, bidirectional)
    proj = P if cell == "lstm_proj" else 0
    return rnnkernels.LSTM(*args, bias, batch_first, 0.0, bidirectional, proj)


def make_inputs(rnn, layout, T, with_hx, seed=0):
    """The model's inputs at T: x, the lengths (None unless packed), h0 and c0 (None when not
    given; LSTM only for c0)."""
    g = torch.Generator().manual_seed(seed)
    shape = {"batch_first": (B, T, I), "unbatched": (T, I)}.get(layout, (T, B, I))
    x = torch.randn(*shape, generator=g)
    lengths = None
    if layout.startswith("packed"):
        lengths = LENGTHS[T] if layout == "packed_unsorted" else sorted(LENGTHS[T], reverse=True)
        lengths = torch.tensor(lengths)
    states = [None, None]
    if with_hx:
        L = rnn.num_layers * (2 if rnn.bidirectional else 1)
        batch = () if layout == "unbatched" else (B,)
        sizes = [getattr(rnn, "proj_size", 0) or H, H] if isinstance(rnn, rnnkernels.LSTM) else [H]
        states[: len(sizes)] = [torch.randn(L, *batch, size, generator=g) for size in sizes]
    return [x, lengths, *states]


def export(model, inputs, dynamo, layout):
    """The ONNX model (a ModelProto) of ``model`` exported at ``inputs``, T dynamic."""
    t_axis = 1 if layout == "batch_first" else 0
    with warnings.catch_warnings():
        # The TorchScript exporter warns about tracing and batch sizes; neither concerns us here.
        warnings.simplefilter("ignore")
        if dynamo:
            T = torch.export.Dim("T", min=2)
            shapes = ({t_axis: T}, *[None] * (len(inputs) - 1))
            program = torch.onnx.export(model, tuple(inputs), dynamo=True, verbose=False,
                                        dynamic_shapes=shapes)  # fmt: skip
            return program.model_proto
        f = io.BytesIO()
        names = [f"input_{k}" for k, t in enumerate(inputs) if t is not None]
        torch.onnx.export(model, tuple(inputs), f, dynamo=False, input_names=names,
                          dynamic_axes={names[0]: {t_axis: "T"}})  # fmt: skip
        return onnx.load_from_string(f.getvalue())


def run_onnx(proto, inputs):
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    given = [t for t in inputs if t is not None]
    assert len(names) == len(given), f"the ONNX model takes {names}"
    return session.run(None, {n: t.numpy() for n, t in zip(names, given)})


def op_types(proto) -> set[str]:
    """Every operator in the model, subgraphs (Loop / Scan bodies) included."""

    def walk(graph):
        for node in graph.node:
            yield node
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    yield from walk(attr.g)

    nodes = list(walk(proto.graph))
    assert all(n.domain in ("", "ai.onnx") for n in nodes), "only standard ONNX operators"
    return {n.op_type for n in nodes}


def check_export(cell, dynamo, layout, with_hx, **config):
    torch.manual_seed(0)
    rnn = make_rnn(cell, batch_first=layout == "batch_first", **config)
    model = Exported(rnn, layout).eval()
    proto = export(model, make_inputs(rnn, layout, T_EXPORT, with_hx), dynamo, layout)
    run_inputs = make_inputs(rnn, layout, T_RUN, with_hx, seed=1)
    with torch.no_grad():
        expected = model(*run_inputs)
    actual = run_onnx(proto, run_inputs)
    assert len(actual) == len(expected)
    for k, (a, e) in enumerate(zip(actual, expected)):
        assert_close(torch.from_numpy(a), e, f"output {k}")
    return proto


def expected_ops(cell, dynamo) -> tuple[str, set[str]]:
    """The operator that carries the recurrence, and those that must not appear with it."""
    if cell in ("lstm", "gru", "rnn", "rnn_tanh"):
        return cell[:4].upper().rstrip("_"), {"Loop", "Scan"}
    return ("Scan" if dynamo else "Loop"), {"LSTM", "GRU", "RNN"}


def check_ops(proto, cell, dynamo, packed=False):
    carrier, absent = expected_ops(cell, dynamo)
    ops = op_types(proto)
    assert carrier in ops and not ops & absent, sorted(ops)
    if packed:  # the lengths reach the LSTM / GRU as its sequence_lens
        node = next(n for n in proto.graph.node if n.op_type == carrier)
        assert len(node.input) > 4 and node.input[4], "sequence_lens"


FLAGS = {
    "num_layers": [1, 2],
    "bidirectional": [False, True],
    "bias": [True, False],
    "with_hx": [False, True],
}
IDS = {
    "cell": str,
    "dynamo": lambda d: "dynamo" if d else "torchscript",
    "num_layers": "L{}".format,
    "bidirectional": lambda b: "bi" if b else "",
    "bias": lambda b: "" if b else "nobias",
    "with_hx": lambda h: "hx" if h else "",
}


@pytest.mark.parametrize(
    "cell,dynamo,layout,num_layers,bidirectional,bias,with_hx",
    grid({"cell": CELLS, "dynamo": [False, True], "layout": PADDED, **FLAGS}, pairwise=True,
         ids=IDS),
)  # fmt: skip
def test_export_matches_eager(cell, dynamo, layout, num_layers, bidirectional, bias, with_hx):
    """Every cell, both exporters, padded / batch-first / unbatched input."""
    config = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    check_ops(check_export(cell, dynamo, layout, with_hx, **config), cell, dynamo)


@pytest.mark.parametrize(
    "cell,layout,num_layers,bidirectional,bias,with_hx",
    grid({"cell": ["lstm", "gru", "rnn"], "layout": PACKED, **FLAGS}, pairwise=True, ids=IDS),
)
def test_packed_export_matches_eager(cell, layout, num_layers, bidirectional, bias, with_hx):
    """Packed input (pack_padded_sequence inside the model, sorted or not) with dynamo=False: the
    lengths become the ONNX LSTM / GRU / RNN's sequence_lens."""
    config = dict(num_layers=num_layers, bidirectional=bidirectional, bias=bias)
    proto = check_export(cell, False, layout, with_hx, **config)
    check_ops(proto, cell, False, packed=True)


REFUSED = {  # per cell, what the error says under each exporter (dynamo: any cell)
    "dynamo": "dynamo=True): torch.export cannot trace pack_padded_sequence",
    "indrnn": "dynamo=False): that exporter removes pack_padded_sequence only in front of ONNX's "
    "LSTM / GRU / RNN operators, and IndRNN has no ONNX operator (it exports as a Loop)",
    "lstm_proj": "and an LSTM with proj_size > 0 has no ONNX operator (it exports as a Loop)",
}
REFUSED_DEFAULT = {("indrnn", False, "packed_unsorted"), ("gru", True, "packed_sorted")}


@pytest.mark.parametrize(
    "cell,dynamo,layout",
    [
        pytest.param(
            *case,
            id="-".join(map(str, case)),
            marks=[] if case in REFUSED_DEFAULT else [pytest.mark.slow],
        )
        for case in [
            *itertools.product(CELLS, [True], PACKED),
            *itertools.product(["indrnn", "lstm_proj"], [False], PACKED),
        ]
    ],
)
def test_packed_without_onnx_form_raises(cell, dynamo, layout):
    """Packed input where no ONNX form exists: our error, saying why, rather than the
    exporter's own failure further on."""
    message = REFUSED["dynamo" if dynamo else cell]
    with pytest.raises(Exception, match=re.escape(message)) as info:
        check_export(cell, dynamo, layout, with_hx=False)
    module = {"indrnn": "IndRNN", "gru": "GRU", "rnn": "RNN"}.get(cell, "LSTM")
    assert f"rnnkernels.{module}: packed input (a PackedSequence) cannot" in str(info.value)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_rnn_tanh_export_matches_eager(dynamo):
    """RNN's default nonlinearity (the grid's RNN is relu): the node's activations, both ways."""
    proto = check_export("rnn_tanh", dynamo, "padded", True, num_layers=2, bidirectional=True)
    check_ops(proto, "rnn_tanh", dynamo)
    node = next(n for n in proto.graph.node if n.op_type == "RNN")
    activations = next((a.strings for a in node.attribute if a.name == "activations"), None)
    assert activations is None or set(activations) == {b"Tanh"}  # None: ONNX's default, Tanh


class Tagger(nn.Module):
    """The model of issue 18: a 2-layer bidirectional batch-first LSTM, a second LSTM and a
    linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.LSTM(I, H, 2, batch_first=True, bidirectional=True)
        self.decoder = nn.LSTM(2 * H, H, batch_first=True)
        self.head = nn.Linear(H, 2)

    def forward(self, x):
        y, _ = self.encoder(x)
        y, (h, c) = self.decoder(y)
        return self.head(y), h, c


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_converted_model_exports_like_torch(dynamo):
    """rnnkernels.convert, then torch.onnx.export: ONNX LSTM nodes, one per layer (3), and
    onnxruntime gives eager's numbers, ours and torch's, at another T than the export's. For
    dynamo=True torch's own model fails in onnxruntime (its bidirectional layers lose the dynamic
    T); ours must run."""
    torch.manual_seed(0)
    theirs = Tagger().eval()
    ours = rnnkernels.convert(copy.deepcopy(theirs))
    assert isinstance(ours.encoder, rnnkernels.LSTM)
    proto = export(ours, [torch.randn(B, T_EXPORT, I)], dynamo, "batch_first")
    x = torch.randn(B, T_RUN, I)
    actual = run_onnx(proto, [x])
    with torch.no_grad():
        for expected in (ours(x), theirs(x)):
            for k, (a, e) in enumerate(zip(actual, expected)):
                assert_close(torch.from_numpy(a), e, f"output {k}")
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("LSTM") == 3 and not {"Loop", "Scan"} & set(ops), ops
