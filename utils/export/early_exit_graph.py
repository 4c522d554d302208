"""One ONNX graph for the whole early exit: the exported segments nested in `If` nodes, the exit decisions inside.

Driving the segments from Python costs a runtime call and a few tensor operations per exit; at batch size 1 on a
small model that is a visible share of the time. Here the loop lives in the graph:

    segment k -> decision k -> If every row leaves: this exit's logits
                               else: keep the rows that stay (Compress), run segment k + 1 and the rest on them,
                                     write their logits and exit layers back over this exit's (ScatterND)

so the batch shrinks as samples leave, as in `models.exiting.run_early_exit`. The decision is exported from the
criterion's own `step` (`models.criteria`), so each rule is still defined once. Graph inputs: `pixel_values`,
`thresholds` (one per exit), `patience` and the criterion's per-sample state (`initial_state`); outputs `logits`
(float32) and `exit_layer` (1-based). Changing thresholds or patience needs no rebuild; another criterion needs
another decision graph.

A single image either leaves at an exit or runs on whole, so the graph for batches of one (`single_row`) branches on
that image's decision alone and never picks out or writes back rows; at batch size 1 those steps were a few percent
of the time.
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import onnx
import onnx.utils
import torch
from onnx import TensorProto, compose, helper
from torch import nn

from models.criteria import ExitCriterion, State, get_criterion

# ONNX element types of the logits a segment can produce, and the torch dtype of the example used to export the
# decision for them.
LOGITS_DTYPES = {TensorProto.FLOAT: torch.float32, TensorProto.FLOAT16: torch.float16}


class DecisionStep(nn.Module):
    """`criterion.step` as a module, for export: (logits, threshold, patience, state) -> (whether every row leaves,
    the rows that stay, new state...)."""

    def __init__(self, criterion: ExitCriterion):
        super().__init__()
        self.criterion = criterion

    def forward(self, logits: torch.Tensor, threshold: torch.Tensor, patience: torch.Tensor,
                state: State) -> tuple[torch.Tensor, ...]:
        leave, new_state = self.criterion.step(logits, threshold, patience, state)
        return (leave.all(), ~leave, *(new_state[name] for name in state))


@functools.lru_cache(maxsize=32)
def decision_graph(criterion: ExitCriterion, logits_type: int, num_labels: int, opset: int) -> bytes:
    """The serialised ONNX graph of one decision of `criterion`: inputs `logits`, `threshold`, `patience` and the
    state tensors (named as in `initial_state`); outputs `everyone_leaves`, `staying` and the new state, in that
    order."""
    state = criterion.initial_state(2, "cpu")
    logits = torch.randn(2, num_labels, dtype=LOGITS_DTYPES[logits_type])
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    dynamic = {"logits": {0: batch}, "threshold": None, "patience": None,
               "state": {name: {0: batch} for name in state}}
    with warnings.catch_warnings():  # the exporter's notes on renaming the dynamic axis
        warnings.simplefilter("ignore", UserWarning)
        program = torch.onnx.export(DecisionStep(criterion), (logits, torch.tensor(0.5), torch.tensor(1)),
                                    kwargs={"state": state}, dynamic_shapes=dynamic, dynamo=True,
                                    input_names=["logits", "threshold", "patience", *state],
                                    output_names=["everyone_leaves", "staying", *(f"next_{name}" for name in state)],
                                    opset_version=opset, verbose=False)
    return program.model_proto.SerializeToString()


class GraphBuilder:
    """Hands out unique value names and inlines exported graphs. Weights become `Constant` nodes beside the nodes
    that read them, so each nested branch holds its own segment's weights: an `If` passes every outer value its
    branches read into them at each call, and with all weights in the outer graph that cost grew with the depth."""

    def __init__(self) -> None:
        self.functions: dict[tuple[str, str], onnx.FunctionProto] = {}
        self.count = 0

    def name(self, base: str) -> str:
        self.count += 1
        return f"{base}_{self.count}"

    def int64(self, value: int, shape: Sequence[int] = ()) -> tuple[onnx.NodeProto, str]:
        """A `Constant` node holding the int64 `value` (a scalar, or `shape` filled with it), and its name."""
        name = self.name("const")
        tensor = helper.make_tensor(name, TensorProto.INT64, list(shape), [value] * math.prod(shape))
        return helper.make_node("Constant", [], [name], value=tensor), name

    def inline(self, model: onnx.ModelProto, prefix: str, sources: dict[str, str]) -> tuple[list[onnx.NodeProto],
                                                                                             list[str]]:
        """The nodes of `model` (its weights as `Constant` nodes) with every name prefixed and its inputs read from
        `sources` (input name -> value); returns (nodes, output names)."""
        model = compose.add_prefix(model, prefix)
        for function in model.functions:
            self.functions[(function.domain, function.name)] = function
        renamed = {prefix + name: value for name, value in sources.items()}
        missing = [graph_input.name for graph_input in model.graph.input if graph_input.name not in renamed]
        if missing:
            raise ValueError(f"No value given for the graph inputs {missing}.")
        nodes = [helper.make_node("Constant", [], [weight.name], value=weight) for weight in model.graph.initializer]
        nodes += model.graph.node
        for node in nodes:
            for position, name in enumerate(node.input):
                node.input[position] = renamed.get(name, name)
        return nodes, [output.name for output in model.graph.output]


def batch_fill(builder: GraphBuilder, like: str, value: int, single_row: bool) -> tuple[list[onnx.NodeProto], str]:
    """Nodes making an int64 vector holding `value` once per row of `like` (one row: a constant); returns (nodes,
    its name)."""
    if single_row:
        constant, filled = builder.int64(value, (1,))
        return [constant], filled
    rows, filled = builder.name("rows"), builder.name("layer")
    constant, name = builder.int64(value)
    return [constant, helper.make_node("Shape", [like], [rows], end=1),
            helper.make_node("Expand", [name, rows], [filled])], filled


def branch(builder: GraphBuilder, nodes: list[onnx.NodeProto], outputs: Sequence[str],
           types: Sequence[int]) -> onnx.GraphProto:
    return helper.make_graph(nodes, builder.name("branch"), [],
                             [helper.make_tensor_value_info(name, kind, None) for name, kind in zip(outputs, types)])


def early_exit_graph(segments: Sequence[onnx.ModelProto], strategy: str, exit_layers: Sequence[int],
                     num_blocks: int, single_row: bool = False) -> onnx.ModelProto:
    """Nest the exported segments (`utils.export.onnx_export`) and criterion `strategy`'s decisions into one graph.

    Args:
        segments: the exit segments in order, then the final one.
        strategy: a registered criterion.
        exit_layers: 1-based layer of each exit.
        num_blocks: the exit layer of the final classifier.
        single_row: build the graph for batches of exactly one image (onnxruntime refuses other sizes).
    """
    logits_type = segments[0].graph.output[-1].type.tensor_type.elem_type
    if logits_type not in LOGITS_DTYPES:
        raise ValueError(f"Segments with logits of ONNX type {logits_type} are not supported (float32 or float16).")
    num_labels = segments[0].graph.output[-1].type.tensor_type.shape.dim[1].dim_value
    opset = max(entry.version for entry in segments[0].opset_import if entry.domain in ("", "ai.onnx"))
    criterion = get_criterion(strategy)
    decision = onnx.load_from_string(decision_graph(criterion, logits_type, num_labels, opset))
    if single_row:  # the row's own decision is the branch condition: drop the reduction over rows
        decision = onnx.utils.Extractor(decision).extract_model(
            [graph_input.name for graph_input in decision.graph.input],
            [graph_output.name for graph_output in decision.graph.output[1:]])
    nesting = ExitNesting(GraphBuilder(), segments, decision, list(criterion.initial_state(1, "cpu")),
                          list(exit_layers), num_blocks, single_row, (logits_type, TensorProto.INT64))
    nodes, logits, layers = nesting.from_exit(0, "pixel_values", nesting.state_names)
    nodes += [helper.make_node("Cast", [logits], ["logits"], to=TensorProto.FLOAT),
              helper.make_node("Identity", [layers], ["exit_layer"])]
    return assemble_model(nesting, nodes, num_labels)


@dataclass
class ExitNesting:
    """Writes the nested graph: segment k, then criterion k's decision, then an `If` that either hands back exit
    k's logits or runs segment k+1 onwards on the rows that stay."""

    builder: GraphBuilder
    segments: Sequence[onnx.ModelProto]
    decision: onnx.ModelProto
    state_names: list[str]
    exit_layers: list[int]
    num_blocks: int
    single_row: bool
    types: tuple[int, int]  # ONNX element types of the logits and of the exit layers

    def from_exit(self, index: int, hidden: str, state: list[str]) -> tuple[list[onnx.NodeProto], str, str]:
        """Nodes running segment `index` onwards on the rows in `hidden`; returns (nodes, logits, exit layers)."""
        segment = self.segments[index]
        nodes, outputs = self.builder.inline(segment, f"segment{index}_", {segment.graph.input[0].name: hidden})
        if index == len(self.exit_layers):
            fill, layers = batch_fill(self.builder, outputs[-1], self.num_blocks, self.single_row)
            return nodes + fill, outputs[-1], layers
        next_hidden, logits = outputs
        decided, decision_outputs = self.decide(index, logits, state)
        fill, layers_here = batch_fill(self.builder, logits, self.exit_layers[index], self.single_row)
        nodes += decided + fill
        leave = self.leave_branch(logits, layers_here)
        if self.single_row:  # the row stays: the rest of the model runs on it as it is
            staying, next_state = decision_outputs[0], decision_outputs[1:]
            later_nodes, later_logits, later_layers = self.from_exit(index + 1, next_hidden, next_state)
            condition, if_true, if_false = staying, (later_nodes, [later_logits, later_layers]), leave
        else:
            everyone, staying, next_state = decision_outputs[0], decision_outputs[1], decision_outputs[2:]
            stay = self.stay_branch(index, logits, layers_here, next_hidden, staying, next_state)
            condition, if_true, if_false = everyone, leave, stay
        out_logits, out_layers = self.builder.name("logits"), self.builder.name("layer")
        nodes.append(helper.make_node("If", [condition], [out_logits, out_layers],
                                      then_branch=branch(self.builder, *if_true, self.types),
                                      else_branch=branch(self.builder, *if_false, self.types)))
        return nodes, out_logits, out_layers

    def decide(self, index: int, logits: str, state: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
        """Nodes of exit `index`'s decision on `logits` with its own threshold; returns (nodes, decision outputs)."""
        threshold = self.builder.name("threshold")
        position, position_name = self.builder.int64(index)
        nodes = [position, helper.make_node("Gather", ["thresholds", position_name], [threshold], axis=0)]
        inputs = ["logits", "threshold", "patience", *self.state_names]
        decided, outputs = self.builder.inline(self.decision, f"decision{index}_", dict(zip(
            inputs, [logits, threshold, "patience", *state])))
        return nodes + decided, outputs

    def leave_branch(self, logits: str, layers: str) -> tuple[list[onnx.NodeProto], list[str]]:
        """Every row leaves here: this exit's logits and layer."""
        then_logits, then_layers = self.builder.name("logits"), self.builder.name("layer")
        return ([helper.make_node("Identity", [logits], [then_logits]),
                 helper.make_node("Identity", [layers], [then_layers])], [then_logits, then_layers])

    def stay_branch(self, index: int, logits: str, layers: str, next_hidden: str, staying: str,
                    next_state: list[str]) -> tuple[list[onnx.NodeProto], list[str]]:
        """Some rows stay: pick them out, run them through the rest of the model, write their results back."""
        builder = self.builder
        rows, row_indices, kept_hidden = builder.name("nonzero"), builder.name("rows"), builder.name("hidden")
        kept_state = [builder.name(name) for name in self.state_names]
        nodes = [helper.make_node("Compress", [next_hidden, staying], [kept_hidden], axis=0),
                 *(helper.make_node("Compress", [value, staying], [kept], axis=0)
                   for value, kept in zip(next_state, kept_state))]
        later_nodes, later_logits, later_layers = self.from_exit(index + 1, kept_hidden, kept_state)
        else_logits, else_layers = builder.name("logits"), builder.name("layer")
        nodes += [*later_nodes,
                  helper.make_node("NonZero", [staying], [rows]),
                  helper.make_node("Transpose", [rows], [row_indices], perm=[1, 0]),
                  helper.make_node("ScatterND", [logits, row_indices, later_logits], [else_logits]),
                  helper.make_node("ScatterND", [layers, row_indices, later_layers], [else_layers])]
        return nodes, [else_logits, else_layers]


def assemble_model(nesting: ExitNesting, nodes: list[onnx.NodeProto], num_labels: int) -> onnx.ModelProto:
    """The whole model around the nested nodes: its inputs and outputs, opsets, functions and inferred shapes."""
    first_input = nesting.segments[0].graph.input[0]
    inputs = [helper.make_tensor_value_info("pixel_values", first_input.type.tensor_type.elem_type,
                                            ["batch", *(dim.dim_value for dim in
                                                        first_input.type.tensor_type.shape.dim[1:])]),
              helper.make_tensor_value_info("thresholds", TensorProto.FLOAT, [len(nesting.exit_layers)]),
              helper.make_tensor_value_info("patience", TensorProto.INT64, []),
              *(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch"]) for name in nesting.state_names)]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", num_labels]),
               helper.make_tensor_value_info("exit_layer", TensorProto.INT64, ["batch"])]
    graph = helper.make_graph(nodes, "early_exit", inputs, outputs)
    opsets = {}
    for model in (*nesting.segments, nesting.decision):
        for entry in model.opset_import:
            opsets[entry.domain] = max(opsets.get(entry.domain, 0), entry.version)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(domain, version)
                                                    for domain, version in opsets.items()],
                              functions=list(nesting.builder.functions.values()),
                              ir_version=max(model.ir_version for model in nesting.segments))
    # Shapes inside the branches let onnxruntime optimise the nested segments as it does the separate ones.
    return onnx.shape_inference.infer_shapes(model, data_prop=True)
