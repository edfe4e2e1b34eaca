"""Procedural bugs: single-site mutations of Python source, made with libcst.

In the style of SWE-smith's procedural modifications, each mutation changes
one place inside one function body, keeping the rest of the file byte for
byte (libcst round-trips formatting and comments):

==================  ===============================================================
operator            what it does
==================  ===============================================================
flip_comparison     ``<`` -> ``<=``, ``>=`` -> ``>``, ``==`` <-> ``!=``, ``in`` <-> ``not in``,
                    ``is`` <-> ``is not``
off_by_one          an integer literal ``n`` -> ``n + 1`` or ``n - 1``
negate_condition    the test of an ``if``/``elif``/``while``/conditional expression negated
swap_arguments      two adjacent positional arguments of a call swapped
remove_statement    an assignment, augmented assignment, expression statement,
                    ``break`` or ``continue`` removed (its block keeps a statement)
change_return       ``return True`` <-> ``return False``, ``return X`` -> ``return None``
flip_operator       ``+`` <-> ``-`` (not on string literals), ``and`` <-> ``or``
==================  ===============================================================

Only code inside function bodies is mutated (not decorators, annotations or
default values), so a mutant imports like the original and its bug shows up
when a test calls the function. ``find_sites`` lists every site of a file in a
fixed order; ``apply_site`` makes the mutant of one site. Sites are named by
(operator, ordinal among that operator's sites), so the same source always
gives the same sites.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import libcst as cst
from libcst.metadata import MetadataWrapper, PositionProvider

__all__ = ["OPERATORS", "Site", "apply_site", "find_sites", "unified_diff"]

OPERATORS = ("flip_comparison", "off_by_one", "negate_condition", "swap_arguments",
             "remove_statement", "change_return", "flip_operator")

_FLIP_COMPARISON: dict[type, type] = {
    cst.LessThan: cst.LessThanEqual,
    cst.LessThanEqual: cst.LessThan,
    cst.GreaterThan: cst.GreaterThanEqual,
    cst.GreaterThanEqual: cst.GreaterThan,
    cst.Equal: cst.NotEqual,
    cst.NotEqual: cst.Equal,
    cst.In: cst.NotIn,
    cst.NotIn: cst.In,
    cst.Is: cst.IsNot,
    cst.IsNot: cst.Is,
}
_NO_SWAP_CALLS = frozenset({"isinstance", "issubclass", "getattr", "setattr", "hasattr", "delattr",
                            "super", "print", "range", "enumerate", "zip", "map", "filter", "max", "min"})
_MAX_INT = 1_000_000


@dataclass(frozen=True)
class Site:
    """One place a mutation can be made."""

    operator: str
    ordinal: int
    """Index among this file's sites of the same operator, in traversal order."""
    function: str
    """Qualified name of the innermost enclosing function, e.g. ``Cache.get``."""
    line: int
    """1-based line of the mutated node."""
    func_lines: tuple[int, int]
    """First line of the function (its first decorator) and the line of its ``def``."""
    variant: int = 0
    """For operators with several outcomes per node (off_by_one: 0 is +1, 1 is -1)."""

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.operator, self.ordinal, self.variant)


class _Mutator(cst.CSTTransformer):
    """Counts sites in traversal order and, when given a target, mutates exactly that one."""

    METADATA_DEPENDENCIES = (PositionProvider,)

    def __init__(self, target: tuple[str, int, int] | None = None) -> None:
        super().__init__()
        self.target = target
        self.sites: list[Site] = []
        self.counts: dict[str, int] = {op: 0 for op in OPERATORS}
        self._funcs: list[tuple[str, tuple[int, int]]] = []
        self._classes: list[str] = []
        self._body_depth = 0
        self._skip_depth = 0
        self._hit: cst.CSTNode | None = None
        self._hit_operator = ""
        self._hit_variant = 0
        self.applied = False

    # -- scope -----------------------------------------------------------------------------

    def visit_ClassDef(self, node: cst.ClassDef) -> bool:
        self._classes.append(node.name.value)
        return True

    def leave_ClassDef(self, original: cst.ClassDef, updated: cst.ClassDef) -> cst.ClassDef:
        self._classes.pop()
        return updated

    def visit_FunctionDef(self, node: cst.FunctionDef) -> bool:
        def_line = self.get_metadata(PositionProvider, node.name).start.line
        first = node.decorators[0] if node.decorators else node
        start = min(self.get_metadata(PositionProvider, first).start.line, def_line)
        outer = self._funcs[-1][0] + ".<locals>." if self._funcs else ""
        prefix = outer or ("".join(c + "." for c in self._classes))
        self._funcs.append((prefix + node.name.value, (start, def_line)))
        return True

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        self._funcs.pop()
        return updated

    def visit_FunctionDef_body(self, node: cst.FunctionDef) -> None:
        self._body_depth += 1

    def leave_FunctionDef_body(self, node: cst.FunctionDef) -> None:
        self._body_depth -= 1

    def visit_Decorator(self, node: cst.Decorator) -> bool:
        self._skip_depth += 1
        return True

    def leave_Decorator(self, original: cst.Decorator, updated: cst.Decorator) -> cst.Decorator:
        self._skip_depth -= 1
        return updated

    def visit_Annotation(self, node: cst.Annotation) -> bool:
        self._skip_depth += 1
        return True

    def leave_Annotation(self, original: cst.Annotation, updated: cst.Annotation) -> cst.Annotation:
        self._skip_depth -= 1
        return updated

    def visit_Parameters(self, node: cst.Parameters) -> bool:
        self._skip_depth += 1  # default values of nested functions
        return True

    def leave_Parameters(self, original: cst.Parameters, updated: cst.Parameters) -> cst.Parameters:
        self._skip_depth -= 1
        return updated

    def _active(self) -> bool:
        return self._body_depth > 0 and self._skip_depth == 0 and bool(self._funcs)

    def _site(self, operator: str, node: cst.CSTNode, variants: int = 1) -> None:
        ordinal = self.counts[operator]
        self.counts[operator] += 1
        name, lines = self._funcs[-1]
        line = self.get_metadata(PositionProvider, node).start.line
        for v in range(variants):
            self.sites.append(Site(operator, ordinal, name, line, lines, v))
            if self.target == (operator, ordinal, v):
                self._hit, self._hit_operator, self._hit_variant = node, operator, v

    def _is_hit(self, original: cst.CSTNode, operator: str) -> bool:
        if self._hit is not None and original is self._hit and operator == self._hit_operator and not self.applied:
            self.applied = True
            return True
        return False

    # -- flip_comparison -------------------------------------------------------------------

    def visit_Comparison(self, node: cst.Comparison) -> bool:
        if self._active() and len(node.comparisons) == 1 and type(node.comparisons[0].operator) in _FLIP_COMPARISON:
            self._site("flip_comparison", node)
        return True

    def leave_Comparison(self, original: cst.Comparison, updated: cst.Comparison) -> cst.BaseExpression:
        if not self._is_hit(original, "flip_comparison"):
            return updated
        target = updated.comparisons[0]
        old = target.operator
        new_type = _FLIP_COMPARISON[type(old)]
        new_op = new_type(whitespace_before=old.whitespace_before, whitespace_after=old.whitespace_after)
        return updated.with_changes(comparisons=[target.with_changes(operator=new_op)])

    # -- off_by_one ------------------------------------------------------------------------

    def visit_Integer(self, node: cst.Integer) -> bool:
        if self._active() and node.value.isdigit() and int(node.value) <= _MAX_INT:
            self._site("off_by_one", node, variants=2 if int(node.value) > 0 else 1)
        return False

    def leave_Integer(self, original: cst.Integer, updated: cst.Integer) -> cst.BaseExpression:
        if not self._is_hit(original, "off_by_one"):
            return updated
        n = int(original.value)
        return updated.with_changes(value=str(n + 1 if self._hit_variant == 0 else n - 1))

    # -- negate_condition ------------------------------------------------------------------

    def visit_If(self, node: cst.If) -> bool:
        if self._active():
            self._site("negate_condition", node.test)
        return True

    def visit_While(self, node: cst.While) -> bool:
        if self._active():
            self._site("negate_condition", node.test)
        return True

    def visit_IfExp(self, node: cst.IfExp) -> bool:
        if self._active():
            self._site("negate_condition", node.test)
        return True

    def leave_If(self, original: cst.If, updated: cst.If) -> cst.If:
        if self._is_hit(original.test, "negate_condition"):
            return updated.with_changes(test=_negate(updated.test))
        return updated

    def leave_While(self, original: cst.While, updated: cst.While) -> cst.While:
        if self._is_hit(original.test, "negate_condition"):
            return updated.with_changes(test=_negate(updated.test))
        return updated

    def leave_IfExp(self, original: cst.IfExp, updated: cst.IfExp) -> cst.IfExp:
        if self._is_hit(original.test, "negate_condition"):
            return updated.with_changes(test=_negate(updated.test))
        return updated

    # -- swap_arguments --------------------------------------------------------------------

    def visit_Call(self, node: cst.Call) -> bool:
        if self._active() and _swappable(node) is not None and _callee(node) not in _NO_SWAP_CALLS:
            self._site("swap_arguments", node)
        return True

    def leave_Call(self, original: cst.Call, updated: cst.Call) -> cst.BaseExpression:
        if not self._is_hit(original, "swap_arguments"):
            return updated
        i = _swappable(updated)
        assert i is not None
        args = list(updated.args)
        first, second = args[i], args[i + 1]
        args[i] = first.with_changes(value=second.value)
        args[i + 1] = second.with_changes(value=first.value)
        return updated.with_changes(args=args)

    # -- remove_statement ------------------------------------------------------------------

    def visit_IndentedBlock(self, node: cst.IndentedBlock) -> bool:
        if self._active() and len(node.body) >= 2:
            for stmt in node.body:
                if _removable(stmt):
                    self._site("remove_statement", stmt)
        return True

    def leave_IndentedBlock(self, original: cst.IndentedBlock, updated: cst.IndentedBlock) -> cst.IndentedBlock:
        if self._hit is None or self.applied or self._hit_operator != "remove_statement":
            return updated
        for i, stmt in enumerate(original.body):
            if stmt is self._hit:
                self.applied = True
                return updated.with_changes(body=[s for j, s in enumerate(updated.body) if j != i])
        return updated

    # -- change_return ---------------------------------------------------------------------

    def visit_Return(self, node: cst.Return) -> bool:
        value = node.value
        if self._active() and value is not None and not (isinstance(value, cst.Name) and value.value == "None"):
            self._site("change_return", node)
        return True

    def leave_Return(self, original: cst.Return, updated: cst.Return) -> cst.Return:
        if not self._is_hit(original, "change_return"):
            return updated
        value = updated.value
        if isinstance(value, cst.Name) and value.value in ("True", "False"):
            new: cst.BaseExpression = cst.Name("False" if value.value == "True" else "True")
        else:
            new = cst.Name("None")
        return updated.with_changes(value=new)

    # -- flip_operator ---------------------------------------------------------------------

    def visit_BinaryOperation(self, node: cst.BinaryOperation) -> bool:
        if (self._active() and isinstance(node.operator, (cst.Add, cst.Subtract))
                and not _stringish(node.left) and not _stringish(node.right)):
            self._site("flip_operator", node)
        return True

    def leave_BinaryOperation(self, original: cst.BinaryOperation,
                              updated: cst.BinaryOperation) -> cst.BaseExpression:
        if not self._is_hit(original, "flip_operator"):
            return updated
        old = updated.operator
        new_type = cst.Subtract if isinstance(old, cst.Add) else cst.Add
        return updated.with_changes(operator=new_type(whitespace_before=old.whitespace_before,
                                                      whitespace_after=old.whitespace_after))

    def visit_BooleanOperation(self, node: cst.BooleanOperation) -> bool:
        if self._active():
            self._site("flip_operator", node)
        return True

    def leave_BooleanOperation(self, original: cst.BooleanOperation,
                               updated: cst.BooleanOperation) -> cst.BaseExpression:
        if not self._is_hit(original, "flip_operator"):
            return updated
        old = updated.operator
        new_type = cst.Or if isinstance(old, cst.And) else cst.And
        return updated.with_changes(operator=new_type(whitespace_before=old.whitespace_before,
                                                      whitespace_after=old.whitespace_after))


def _negate(test: cst.BaseExpression) -> cst.BaseExpression:
    if isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not) and not test.lpar:
        inner = test.expression
        if isinstance(inner, cst.BaseExpression) and inner.lpar and len(inner.lpar) == 1 \
                and isinstance(inner, (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Comparison)):
            inner = inner.with_changes(lpar=[], rpar=[])
        return inner
    simple = (cst.Name, cst.Attribute, cst.Call, cst.Subscript, cst.Comparison, cst.Integer,
              cst.SimpleString, cst.List, cst.Tuple, cst.Dict, cst.Set)
    if not isinstance(test, simple) and not test.lpar:
        test = test.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])
    return cst.UnaryOperation(operator=cst.Not(), expression=test)


def _callee(node: cst.Call) -> str:
    func = node.func
    if isinstance(func, cst.Name):
        return func.value
    if isinstance(func, cst.Attribute):
        return func.attr.value
    return ""


def _swappable(node: cst.Call) -> int | None:
    """Index of the first of two adjacent positional arguments with different code, or None."""
    args = node.args
    for i in range(len(args) - 1):
        a, b = args[i], args[i + 1]
        if a.keyword is None and b.keyword is None and not a.star and not b.star:
            if _code(a.value) != _code(b.value):
                return i
    return None


def _code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def _stringish(node: cst.BaseExpression) -> bool:
    return isinstance(node, (cst.SimpleString, cst.ConcatenatedString, cst.FormattedString))


def _removable(stmt: cst.BaseStatement) -> bool:
    if not isinstance(stmt, cst.SimpleStatementLine) or len(stmt.body) != 1:
        return False
    small = stmt.body[0]
    if isinstance(small, (cst.Assign, cst.AugAssign, cst.Break, cst.Continue)):
        return True
    if isinstance(small, cst.AnnAssign):
        return small.value is not None
    if isinstance(small, cst.Expr):
        value = small.value
        return not _stringish(value) and not isinstance(value, (cst.Ellipsis, cst.Name))
    return False


# -- public API ----------------------------------------------------------------------------


def _wrapper(source: str) -> MetadataWrapper:
    return MetadataWrapper(cst.parse_module(source))


def find_sites(source: str) -> list[Site]:
    """Every mutation site of ``source``, in a fixed order; [] if libcst cannot parse it."""
    try:
        wrapper = _wrapper(source)
    except (cst.ParserSyntaxError, RecursionError, ValueError):
        return []
    mutator = _Mutator()
    wrapper.visit(mutator)
    return mutator.sites


def apply_site(source: str, site: Site) -> str | None:
    """``source`` with ``site`` mutated, or None if that makes no change or code that does not compile."""
    try:
        wrapper = _wrapper(source)
    except (cst.ParserSyntaxError, RecursionError, ValueError):
        return None
    mutator = _Mutator(site.key)
    module = wrapper.visit(mutator)
    if not mutator.applied:
        return None
    mutated = module.code
    if mutated == source:
        return None
    try:
        compile(mutated, "<mutant>", "exec", dont_inherit=True)
    except (SyntaxError, ValueError):
        return None
    return mutated


def _split_lines(text: str) -> list[str]:
    """Lines of ``text`` split on "\\n" only (not on form feeds and the like), each keeping its "\\n"."""
    parts = text.split("\n")
    lines = [p + "\n" for p in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def unified_diff(path: str, old: str, new: str, context: int = 3) -> str:
    """A ``git apply``-able unified diff of one file from ``old`` to ``new`` ("" if equal)."""
    if old == new:
        return ""
    out = [f"diff --git a/{path} b/{path}\n"]
    for line in difflib.unified_diff(_split_lines(old), _split_lines(new), f"a/{path}", f"b/{path}",
                                     n=context):
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return "".join(out)
