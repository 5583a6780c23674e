"""main.py's constants read from files, never run: main.py's own settings block (the defaults
of every setting, for the library: no module of tool/ imports main.py) and the configs/ files of
one table row each (only the constants that differ).

    python main.py configs/fmnist-cascade.py          # that row's settings; flags still override them
"""

from tool.errors import UserError, shown
from tool.io import read_small_file

MAX_CONFIG_BYTES = 2 ** 20  # a file of main.py's constants is a few kB


def read_constants(path, what="a file of main.py's constants"):
    """{name in lower case: value} of a file's top-level `NAME = literal` lines (main.py's settings
    block, a configs/ file), read with ast.literal_eval: the file is parsed, never run. Anything
    else at the top level of a config file is refused; main.py's lines after its constants are
    skipped (they are code)."""
    import ast

    data = read_small_file(path, f"Give {what}.", limit=MAX_CONFIG_BYTES)
    try:
        tree = ast.parse(data, filename=str(path))
    except (SyntaxError, ValueError, MemoryError, RecursionError) as error:
        raise UserError(f"{path} cannot be read as {what} ({type(error).__name__}: {str(error)[:200]}).") from None
    constants = {}
    for node in tree.body:
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # a docstring
        target = node.targets[0] if isinstance(node, ast.Assign) and len(node.targets) == 1 else None
        if what.startswith("main.py") and (not isinstance(target, ast.Name) or target.id == "DEFAULTS"):
            break  # the end of main.py's settings block
        if not (isinstance(target, ast.Name) and target.id.isupper()):
            raise UserError(f"{path}, line {node.lineno}: a config file holds only lines NAME = value "
                            f"(main.py's constants, e.g. EPOCHS = 40); it is read, never run.")
        try:
            constants[target.id.lower()] = ast.literal_eval(node.value)
        except (ValueError, TypeError, MemoryError, RecursionError):
            raise UserError(f"{path}, line {node.lineno}: {target.id} must be a plain value (a number, string, "
                            f"list, True/False/None), not an expression.") from None
    return constants


def main_defaults():
    """main.py's constants, read from the file (no library module imports main.py): the defaults of
    every setting the Python detector has."""
    from tool.io import REPO

    return read_constants(REPO / "main.py", "main.py's settings block")


def read_config_file(path, defaults):
    """The settings a config file (configs/<row>.py) sets, checked against main.py's constants:
    an unknown name or a value of the wrong type is a UserError naming its line's setting."""
    given = read_constants(path)
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise UserError(f"{path}: {', '.join(k.upper() for k in unknown)} is not one of main.py's constants.")
    from tool.settings import LIST_TYPES, SCALAR_TYPES

    for key, value in given.items():
        default = defaults[key]
        if default is None:  # the kind main.py's None stands for
            default = [] if key in LIST_TYPES else SCALAR_TYPES.get(key, str)()
        if value is not None and not _same_kind(value, default):
            kind = {list: "a list", bool: "True or False", int: "an integer", float: "a number",
                    str: "a string"}.get(type(default), type(default).__name__)
            raise UserError(f"{path}: {key.upper()} = {shown(value)} should be {kind}"
                            f"{', or None' if defaults[key] is None or isinstance(default, list) else ''}, "
                            f"like main.py's {key.upper()} = {shown(defaults[key])}.")
    return given


def _same_kind(value, default):
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(default, bool)
    if isinstance(default, (int, float)):
        return isinstance(value, (int, float)) and (isinstance(default, float) or isinstance(value, int))
    return isinstance(value, type(default))
