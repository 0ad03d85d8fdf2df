"""Can torch-tensorrt compile a model into TensorRT engines? Answered without torch-tensorrt.

torch-tensorrt's dynamo path (`torch_tensorrt.dynamo.compile`, 2.14) does, in order:
  1. `torch.export.export(model, inputs, strict=False)`            (dynamo/_tracer.py)
  2. pre-lowering passes: drop `detach` and assert nodes               (lowering/passes/)
  3. `ep.run_decompositions(get_decompositions())`        (lowering/_decompositions.py):
     torch's decompositions of the ops in its `torch_enabled_decompositions`, plus the
     CompositeImplicitAutograd (CIA) decomposition of every aten op except those in
     `torch_disabled_decompositions` and attention, plus its own decompositions (silu,
     view, rsqrt, instance_norm, ...), which win over torch's
  4. post-lowering passes: constant folding, `max_poolNd_with_indices` -> `max_poolNd`
     when the indices are unused, dead nodes removed, ...
  5. partitioning: a node runs in TensorRT when a converter is registered for its exact
     target and one of that target's converters accepts the node (capability validator);
     everything else runs in PyTorch between TensorRT engines.

`check_model` repeats these steps with facts read from the torch-tensorrt wheel
(`_trt_ops_data.py`): step 3 runs torch's own decomposition functions for the torch part
and leaves the ops torch-tensorrt decomposes with its own code in the graph (that code
needs torch-tensorrt), counting them as converted; step 4 is approximated (constant
subgraphs fold, removed and replaced nodes); step 5 checks converter targets and repeats
the argument checks of the validators that video models meet (pooling `ceil_mode` and
dilation, batch-norm outputs, dropout in inference, dtype casts, attention shapes, getitem).
Validators not repeated here are taken to accept.

    python -m engines.tensorrt_ops                 # every registered model
    python -m engines.tensorrt_ops x3d_xs --graph  # one model, with its lowered op counts
    python -m engines.tensorrt_ops regenerate torch_tensorrt-X.Y.Z-*.whl
"""

from __future__ import annotations

import argparse
import ast
import functools
import operator
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models._files import first_line

from . import _trt_ops_data as _data
from .base import model_name
from .export import export

__all__ = ["OpReport", "check_model", "check_program", "decomposition_table", "op_name"]

TORCH_TENSORRT_VERSION = _data.VERSION

_aten = torch.ops.aten

# Step 2 and 4: nodes torch-tensorrt's lowering passes delete (remove_detach.py,
# remove_assert_nodes.py); they need no converter.
_REMOVED_BY_LOWERING = {
    "torch.ops.aten.detach.default",
    "torch.ops.aten._assert_scalar.default",
    "torch.ops.aten._assert_tensor_metadata.default",
}
# Step 4: replace_max_pool_with_indices.py, when only output 0 (the values) is used.
_MAX_POOL_WITH_INDICES = {
    "torch.ops.aten.max_pool1d_with_indices.default": "torch.ops.aten.max_pool1d.default",
    "torch.ops.aten.max_pool2d_with_indices.default": "torch.ops.aten.max_pool2d.default",
    "torch.ops.aten.max_pool3d_with_indices.default": "torch.ops.aten.max_pool3d.default",
}


def op_name(target) -> str:
    """The name torch-tensorrt's converter table uses: `torch.ops.aten.add.Tensor`, `operator.getitem`."""
    if isinstance(target, str):
        return target
    from torch.fx.node import _get_qualified_name

    name = _get_qualified_name(target)
    return "operator." + name.removeprefix("_operator.") if name.startswith("_operator.") else name


def _short(name: str) -> str:
    return name.removeprefix("torch.ops.")


@dataclass
class OpReport:
    """What one exported model needs from torch-tensorrt."""

    name: str
    ops: Counter = field(default_factory=Counter)  # every op left after lowering, with counts
    unsupported: dict[str, set[str]] = field(default_factory=dict)  # op -> why not
    # Of `ops`, those torch-tensorrt decomposes with its own code before conversion.
    trt_decomposed: Counter = field(default_factory=Counter)
    folded: Counter = field(default_factory=Counter)  # constant subgraphs (computed at build time)
    export_error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.export_error is None and not self.unsupported

    def summary(self) -> str:
        if self.export_error is not None:
            return f"{self.name}: torch.export failed: {self.export_error}"
        if self.ok:
            return (
                f"{self.name}: ok, {sum(self.ops.values())} ops of {len(self.ops)} kinds, "
                f"all converted by torch-tensorrt {TORCH_TENSORRT_VERSION}"
            )
        bad = "; ".join(
            f"{_short(op)} x{self.ops[op]} ({', '.join(sorted(why))})"
            for op, why in sorted(self.unsupported.items())
        )
        return f"{self.name}: not convertible by torch-tensorrt {TORCH_TENSORRT_VERSION}: {bad}"


# --- Step 3 -------------------------------------------------------------------------------


def _resolve(name: str) -> list:
    """`aten.add`, `aten.add.Tensor` or `torch.ops.prims.var.default` -> the op objects
    (a packet stands for itself and all its overloads); [] when this torch lacks it."""
    parts = name.split(".")
    if parts[:2] == ["torch", "ops"]:
        parts = parts[2:]
    obj = torch.ops
    try:
        for part in parts:
            obj = getattr(obj, part)
    except (AttributeError, RuntimeError):
        return []
    if isinstance(obj, torch._ops.OpOverloadPacket):
        return [obj, *(getattr(obj, o) for o in obj.overloads())]
    return [obj]


def _resolve_all(names: Iterable[str]) -> set:
    return {op for name in names for op in _resolve(name)}


@functools.cache
def _trt_own_decompositions() -> frozenset:
    """Op overloads torch-tensorrt decomposes with its own code (attention excluded, as by default)."""
    ops = _resolve_all(_data.TORCH_TRT_DECOMPOSITIONS) - _resolve_all(
        _data.ATTENTION_DECOMPOSITIONS
    )
    return frozenset(op for op in ops if isinstance(op, torch._ops.OpOverload))


def decomposition_table() -> dict:
    """torch-tensorrt's default decomposition table, less the decompositions it implements
    itself (those ops stay in the graph; see `_trt_own_decompositions`)."""
    return dict(_decomposition_table())


@functools.cache
def _decomposition_table() -> dict:
    from torch._decomp import get_decompositions
    from torch._export.utils import (
        _collect_all_valid_cia_ops_for_aten_namespace,
        _get_decomp_for_cia,
    )

    enabled = _resolve_all(_data.ENABLED_TORCH_DECOMPOSITIONS)
    # Exact membership as in torch-tensorrt: a packet in the disabled set (aten.repeat)
    # does not disable its overloads.
    disabled = {op for name in _data.DISABLED_TORCH_DECOMPOSITIONS for op in _resolve(name)[:1]}
    attention = {op for name in _data.ATTENTION_DECOMPOSITIONS for op in _resolve(name)[:1]}
    table = get_decompositions(list(enabled))
    for op in _collect_all_valid_cia_ops_for_aten_namespace():
        if op not in disabled and op not in attention:
            table[op] = _get_decomp_for_cia(op)
    for op in _trt_own_decompositions():
        table.pop(op, None)
    return table


def lower(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """Steps 2-3: the graph torch-tensorrt's converters see (before its own decompositions)."""
    return ep.run_decompositions(decomposition_table())


# --- Steps 4-5 ----------------------------------------------------------------------------


def _arg(node: torch.fx.Node, index: int, default=None):
    return node.args[index] if len(node.args) > index else default


def _meta_shape(node) -> tuple[int, ...] | None:
    val = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _one_user(node, converted) -> str | None:  # aten_ops_converters.py one_user_validator
    users = list(node.users)
    if len(users) == 1 and users[0].target is operator.getitem and users[0].args[1] == 0:
        return None
    return "more outputs than the first are used"


def _avg_pool(node, converted) -> str | None:  # avg_pool_param_validator
    if _arg(node, 4, False):
        return "ceil_mode=True"
    if _arg(node, 6) is not None:
        return "divisor_override"
    return None


def _max_pool(node, converted) -> str | None:  # max_pool_param_validator
    if _arg(node, 4, 1) != 1:
        return f"dilation={_arg(node, 4)}"
    if _arg(node, 5, False):
        return "ceil_mode=True"
    return None


def _dropout(node, converted) -> str | None:  # dropout_inference_validator
    return None if _arg(node, 2) is False else "dropout in training mode"


_CASTS = {
    torch.float32,
    torch.int32,
    torch.int64,
    torch.bool,
    torch.int8,
    torch.float16,
    torch.bfloat16,
}


def _to_copy(node, converted) -> str | None:  # to_copy_dtype_validator
    dtype = node.kwargs.get("dtype")
    if dtype is None:
        return "copy without a dtype (a device move)"
    return None if dtype in _CASTS else f"cast to {dtype}"


def _getitem(node, converted) -> str | None:  # ops_evaluators.py getitem_validator
    parent = node.args[0]
    ok = isinstance(parent, torch.fx.Node) and (parent.op == "get_attr" or parent in converted)
    return None if ok else "item of an unconverted op"


def _sdpa(node, converted) -> str | None:  # scaled_dot_product_attention_validator
    if _arg(node, 5, False) and _arg(node, 3) is not None:
        return "is_causal with attn_mask"
    q, k, v = (_meta_shape(n) for n in node.args[:3])
    if q is None or k is None or v is None:
        return None
    if not len(q) == len(k) == len(v):
        return "query, key and value ranks differ"
    if k != v:
        return "key and value shapes differ"
    seq = len(q) - 2
    if not node.kwargs.get("enable_gqa", False) and any(
        q[i] != k[i] for i in range(len(q)) if i != seq
    ):
        return "query and key shapes differ beyond the sequence"
    return None


_VALIDATORS = {
    "one_user_validator": _one_user,
    "avg_pool_param_validator": _avg_pool,
    "max_pool_param_validator": _max_pool,
    "dropout_inference_validator": _dropout,
    "to_copy_dtype_validator(placeholder_only=False)": _to_copy,
    "to_copy_dtype_validator(placeholder_only=True)": _to_copy,
    "getitem_validator": _getitem,
    "scaled_dot_product_attention_validator": _sdpa,
}


def _why_not(name: str, node: torch.fx.Node, converted: set) -> str | None:
    """None when a converter of `name` accepts `node`, else why not."""
    validators = _data.CONVERTERS.get(name)
    if validators is None:
        return "no converter"
    reasons = []
    for validator in validators:
        check = _VALIDATORS.get(validator)
        reason = check(node, converted) if check is not None else None
        if reason is None:
            return None
        reasons.append(reason)
    return "; ".join(sorted(set(reasons)))


def check_program(ep: torch.export.ExportedProgram, name: str = "model") -> OpReport:
    """Steps 2-5 on an exported program (not yet decomposed)."""
    from torch.export.graph_signature import InputKind

    t0 = time.perf_counter()
    ep = lower(ep)
    report = OpReport(name)
    constant_inputs = {
        spec.arg.name
        for spec in ep.graph_signature.input_specs
        if spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
    }
    trt_own = {op_name(op) for op in _trt_own_decompositions()}
    constant: set[torch.fx.Node] = set()
    converted: set[torch.fx.Node] = set()
    absorbed: set[torch.fx.Node] = set()  # removed along with a replaced node
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            if node.name in constant_inputs:
                constant.add(node)
            continue
        if node.op == "get_attr":
            constant.add(node)
            continue
        if node.op != "call_function":
            continue
        target = op_name(node.target)
        if target in _REMOVED_BY_LOWERING or not node.users:
            continue
        random = isinstance(node.target, torch._ops.OpOverload) and (
            torch.Tag.nondeterministic_seeded in node.target.tags
        )
        if not random and all(arg in constant for arg in node.all_input_nodes):
            constant.add(node)  # constant_fold.py: folded at build time, never converted
            report.folded[target] += 1
            continue
        if node in absorbed:
            converted.add(node)
            continue
        if target in _MAX_POOL_WITH_INDICES and _one_user(node, converted) is None:
            target = _MAX_POOL_WITH_INDICES[target]  # its getitem goes with the indices
            absorbed.update(node.users)
        report.ops[target] += 1
        if target in trt_own:
            report.trt_decomposed[target] += 1
            converted.add(node)
            continue
        reason = _why_not(target, node, converted)
        if reason is None:
            converted.add(node)
        else:
            report.unsupported.setdefault(target, set()).add(reason)
    report.seconds = time.perf_counter() - t0
    return report


def check_model(
    model: torch.nn.Module, example_inputs: Sequence[torch.Tensor], name: str | None = None
) -> OpReport:
    """Export `model` at `example_inputs` and check every op of the lowered graph."""
    name = name or model_name(model)
    t0 = time.perf_counter()
    try:
        ep = export(model, example_inputs)
    except Exception as exc:  # noqa: BLE001 (any export failure is the finding)
        return OpReport(
            name,
            export_error=f"{type(exc).__name__}: {first_line(exc)}",
            seconds=time.perf_counter() - t0,
        )
    report = check_program(ep, name)
    report.seconds = time.perf_counter() - t0
    return report


# --- Reading a torch-tensorrt wheel -----------------------------------------------------


def read_wheel(path: str | Path) -> dict:
    """Converter targets and decomposition sets of a torch-tensorrt wheel, by an AST walk
    over its source (nothing in it is imported or run)."""
    import zipfile

    with zipfile.ZipFile(path) as wheel:
        names = wheel.namelist()

        def source(suffix: str) -> ast.Module:
            (member,) = [n for n in names if n.endswith(suffix)]
            return ast.parse(wheel.read(member).decode())

        version_tree = source("torch_tensorrt/_version.py")
        version = next(
            node.value.value
            for node in ast.walk(version_tree)
            if isinstance(node, ast.Assign)
            and getattr(node.targets[0], "id", None) == "__version__"
        )
        converters: dict[str, list[str]] = {}
        for member in sorted(n for n in names if "/dynamo/conversion/" in n and n.endswith(".py")):
            tree = ast.parse(wheel.read(member).decode())
            for node in ast.walk(tree):
                if not isinstance(node, ast.FunctionDef):
                    continue
                for deco in node.decorator_list:
                    if not (
                        isinstance(deco, ast.Call)
                        and getattr(deco.func, "id", None) == "dynamo_tensorrt_converter"
                    ):
                        continue
                    kw = {k.arg: k.value for k in deco.keywords}
                    key = deco.args[0] if deco.args else kw.get("key")
                    validator = kw.get("capability_validator")
                    converters.setdefault(ast.unparse(key), []).append(
                        ast.unparse(validator) if validator else ""
                    )

        def set_literal(tree: ast.Module, variable: str) -> list[str]:
            for node in ast.walk(tree):
                targets = getattr(node, "targets", None) or [getattr(node, "target", None)]
                if any(getattr(t, "id", None) == variable for t in targets) and isinstance(
                    node.value, ast.Set
                ):
                    return sorted(ast.unparse(e) for e in node.value.elts)
            raise ValueError(f"{variable} not found in {path}")

        groups = source("dynamo/lowering/_decomposition_groups.py")
        decomps = source("dynamo/lowering/_decompositions.py")
        attention = set_literal(decomps, "ATTENTION_DECOMPOSITION_OPS")
        own = set()
        for node in ast.walk(decomps):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) in (
                "register_torch_trt_decomposition",
                "replace_inplace_op",
            ):
                arg = node.args[0]
                if not isinstance(arg, ast.Name):  # `aten_op` inside the helper itself
                    own.add(ast.unparse(arg).removeprefix("torch.ops."))
        own = sorted(o for o in own if o not in attention and f"{o}.default" not in attention)
    return {
        "version": version,
        "source": Path(path).name,
        "converters": {k: tuple(v) for k, v in sorted(converters.items())},
        "enabled": set_literal(groups, "torch_enabled_decompositions"),
        "disabled": set_literal(groups, "torch_disabled_decompositions"),
        "own": own,
        "attention": attention,
    }


def write_data_module(facts: dict, path: str | Path) -> None:
    """Write `facts` (from `read_wheel`) as the Python module `_trt_ops_data.py`."""

    import json

    def strings(values: Iterable[str]) -> str:
        return "".join(f"    {json.dumps(v)},\n" for v in values)

    def row(key: str, validators: Sequence[str]) -> str:  # laid out as `ruff format` would
        items = [json.dumps(v) for v in validators]
        line = f"    {json.dumps(key)}: ({', '.join(items)}{',' if len(items) == 1 else ''}),"
        if len(line) <= 100:
            return line + "\n"
        return (
            f"    {json.dumps(key)}: (\n" + "".join(f"        {i},\n" for i in items) + "    ),\n"
        )

    converters = "".join(row(k, v) for k, v in facts["converters"].items())
    text = (
        f'"""torch-tensorrt {facts["version"]}: which ops it converts and decomposes.\n\n'
        f"Generated from {facts['source']} by `python -m engines.tensorrt_ops regenerate WHEEL`\n"
        "(an AST walk over dynamo/conversion/*.py, dynamo/lowering/_decomposition_groups.py and\n"
        'dynamo/lowering/_decompositions.py). Regenerate; do not edit.\n"""\n\n'
        f"VERSION = {json.dumps(facts['version'])}\n\n"
        "# Converter target -> the capability validator of each registered converter\n"
        "# ('' = none: the converter takes every node).\n"
        f"CONVERTERS: dict[str, tuple[str, ...]] = {{\n{converters}}}\n\n"
        "# torch decompositions torch-tensorrt enables (torch_enabled_decompositions).\n"
        f"ENABLED_TORCH_DECOMPOSITIONS = (\n{strings(facts['enabled'])})\n\n"
        "# CIA decompositions it keeps out (torch_disabled_decompositions).\n"
        f"DISABLED_TORCH_DECOMPOSITIONS = (\n{strings(facts['disabled'])})\n\n"
        "# Ops it decomposes with its own code (register_torch_trt_decomposition), attention aside.\n"
        f"TORCH_TRT_DECOMPOSITIONS = (\n{strings(facts['own'])})\n\n"
        "# Attention ops: neither decomposed nor CIA-expanded by default (decompose_attention=False).\n"
        f"ATTENTION_DECOMPOSITIONS = (\n{strings(facts['attention'])})\n"
    )
    Path(path).write_text(text)


# --- Command line -------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m engines.tensorrt_ops",
        description=f"Check that models export and use only ops torch-tensorrt {TORCH_TENSORRT_VERSION} converts.",
    )
    parser.add_argument(
        "models",
        nargs="*",
        help="model names (default: every registered model); "
        "or `regenerate WHEEL` to rewrite the op tables from a torch-tensorrt wheel",
    )
    parser.add_argument(
        "--graph", action="store_true", help="also print each model's lowered op counts"
    )
    args = parser.parse_args(argv)
    if args.models[:1] == ["regenerate"]:
        if len(args.models) != 2:
            parser.error("regenerate takes the path of a torch-tensorrt wheel")
        target = Path(__file__).with_name("_trt_ops_data.py")
        facts = read_wheel(args.models[1])
        write_data_module(facts, target)
        print(
            f"wrote {target}: torch-tensorrt {facts['version']}, {len(facts['converters'])} converter targets"
        )
        return 0

    import models

    names = args.models or models.available()
    failed = 0
    for name in names:
        try:
            model = models.create(name)
        except models.ModelError as exc:
            print(exc, file=sys.stderr)
            return 2
        report = check_model(model, model.example_inputs(), name)
        print(f"{report.summary()} ({report.seconds:.1f} s)")
        if args.graph:
            for op, count in sorted(report.ops.items()):
                print(f"    {_short(op):60s} {count:5d}")
        failed += not report.ok
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
