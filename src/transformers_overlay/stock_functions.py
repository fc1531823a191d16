"""Recognising transformers' stock `eager_attention_forward` texts, so that the overlay only replaces code it knows.

Two functions are the same stock function when their normalised forms are equal: `ast.dump` of the parsed function
(node types, names, constants, structure; comments, blank lines, line breaks and quote style drop out), with its
docstring and its annotations removed, since neither changes what the function computes while both are rewritten by
transformers' style sweeps (e.g. `Optional[torch.Tensor]` -> `torch.Tensor | None`). Any change to the code, a default
value, the name or a decorator makes a different form. The known texts are stored as source
(`transformers_overlay.known_stock_functions`, generated from the released wheels by
`scripts/make_known_stock_functions.py`) and normalised by the running interpreter, so the comparison does not depend
on the Python version's `ast` node fields.

Standard library only.
"""

import ast
import functools
import inspect


def normalised_source(source: str, name: str = "eager_attention_forward") -> str:
    """
    The normalised form of the module-level function `name` defined in `source` (a whole module or the function
    alone): `ast.dump` without docstring and annotations. Raises ValueError when `source` defines no such function.
    """
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
            return _normalised_node(node)
    raise ValueError(f"no module-level function `{name}` in the given source")


def _normalised_node(node) -> str:
    body = node.body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        if isinstance(body[0].value.value, str):
            body = body[1:] or [ast.Pass()]
    arguments = node.args
    for argument in (
        *arguments.posonlyargs,
        *arguments.args,
        *arguments.kwonlyargs,
        arguments.vararg,
        arguments.kwarg,
    ):
        if argument is not None:
            argument.annotation = None
    node.body, node.returns = body, None
    return ast.dump(node)


def normalised_function(function) -> str | None:
    """
    The normalised form of `function`'s source text; None when its source cannot be read or parsed, or when it wraps
    another function (`inspect.getsource` would read the wrapped function's text, not the code that runs).
    """
    if hasattr(function, "__wrapped__"):
        return None
    try:
        return normalised_source(inspect.getsource(function), function.__name__)
    except (OSError, TypeError, ValueError, SyntaxError, AttributeError):
        return None


@functools.cache
def known_normalised_forms() -> frozenset:
    """The normalised forms of every stock text in `transformers_overlay.known_stock_functions`."""
    from .known_stock_functions import KNOWN_STOCK_FUNCTIONS

    return frozenset(normalised_source(entry["source"]) for entry in KNOWN_STOCK_FUNCTIONS)


def is_known_stock_function(function) -> bool:
    """True when `function`'s source is, once normalised, one of the stock texts of a released transformers."""
    form = normalised_function(function)
    return form is not None and form in known_normalised_forms()
