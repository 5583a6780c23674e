"""Settings: main.py's constants, overridden from the command line, checked, printed.

Every constant in main.py's settings block becomes a flag: EPOCHS -> --epochs, TOP_K -> --top-k.
The flag's type comes from the constant's default; a list default takes one value per element.
An unknown flag or a value of the wrong type is an error that names it.
"""
import argparse

import torch

from tool.errors import UserError

LIST_TYPES = {  # settings whose default may be empty or None: their element type
    "classes": str, "seeds": int, "n_slots": int, "top_k": int, "forget_rate": float, "channels": int,
}
SCALAR_TYPES = {"memae_shrink_threshold": float, "data_dir": str}  # settings whose default is None
OPTIONAL = {"classes", "memae_shrink_threshold", "data_dir"}  # None is a valid value ("none" on the CLI)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit code 2, no usage dump
        raise UserError(f"{message} (see python main.py --help)")


def _none_or(kind):
    def convert(text):
        return None if text.lower() == "none" else kind(text)

    convert.__name__ = kind.__name__
    return convert


def _bool(text):
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_bool.__name__ = "bool"


def add_setting_flags(parser, defaults, help_texts=None):
    """One flag per setting, typed from its default."""
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        help_text = (help_texts or {}).get(key, "").replace("%", "%%")  # argparse formats help with %
        help_text = f"{help_text} (default: {default})" if help_text else f"default: {default}"
        if isinstance(default, (list, tuple)) or key in LIST_TYPES:
            kind = LIST_TYPES.get(key) or (type(default[0]) if default else str)
            parser.add_argument(flag, dest=key, nargs="*", type=kind, default=argparse.SUPPRESS, help=help_text)
        else:
            kind = SCALAR_TYPES.get(key) or type(default)
            kind = _bool if kind is bool else kind
            if key in OPTIONAL:
                kind = _none_or(kind)
            parser.add_argument(flag, dest=key, type=kind, default=argparse.SUPPRESS, help=help_text,
                                metavar=kind.__name__.upper())


def make_parser(defaults, description, help_texts=None):
    parser = _Parser(description=description, allow_abbrev=False,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_setting_flags(parser.add_argument_group("settings (main.py's constants)"), defaults, help_texts)
    return parser


def overrides_from(args, defaults):
    """The settings given on the command line: {key: value}."""
    given = {}
    for key in defaults:
        if hasattr(args, key):
            value = getattr(args, key)
            given[key] = list(value) if isinstance(value, list) else value
    return given


def resolve_device(name):
    """'auto' = CUDA, then Apple MPS, then CPU; a named device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return "mps"
        return "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'. Valid: auto, cpu, cuda, cuda:N, mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device '{name}' asked for, but CUDA is not available here. Use --device cpu or auto.")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"device '{name}' asked for, but only {torch.cuda.device_count()} CUDA device(s) exist.")
    elif device.type == "mps":
        if getattr(torch.backends, "mps", None) is None or not torch.backends.mps.is_available():
            raise UserError(f"device '{name}' asked for, but Apple MPS is not available here. Use --device cpu or auto.")
    elif device.type != "cpu":
        raise UserError(f"unsupported device '{name}'. Valid: auto, cpu, cuda, cuda:N, mps")
    return str(device)


def describe(config, defaults):
    """The effective configuration, one line per setting, '*' marking what differs from main.py."""
    width = max(len(k) for k in config)
    lines = ["configuration ('*' = differs from main.py's defaults):"]
    for key, value in config.items():
        changed = key in defaults and _normal(value) != _normal(defaults[key])
        lines.append(f" {'*' if changed else ' '} {key:<{width}} = {value}"
                     + (f"   (default {defaults[key]})" if changed else ""))
    return "\n".join(lines)


def _normal(value):
    return list(value) if isinstance(value, tuple) else value
