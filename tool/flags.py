"""The command line's flags: every constant in main.py's settings block becomes one, EPOCHS ->
--epochs, TOP_K -> --top-k. The flag's type comes from the constant's default (or LIST_TYPES and
SCALAR_TYPES); a list default takes one value per element; --help groups them by role. An unknown
flag or a value of the wrong type is one error line; a value's range is tool/settings.py's to check.
"""
import argparse

from tool.errors import UserError
from tool.settings import LIST_TYPES, OPTIONAL, SCALAR_TYPES

RENAMED = {  # old flag -> (new flag, why)
    "--threshold": ("--addressing-threshold", "it is the memory's addressing threshold; the decision threshold is "
                                              "--threshold-percentile"),
}


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one UserError line (exit code 2), not a usage dump."""
    def error(self, message):
        raise UserError(f"{message} (see python {self.prog} --help)")


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


GROUPS = {  # the --help sections, in main.py's order within each
    "data": ("dataset", "protocol", "classes", "seeds", "val_fraction", "data_dir"),
    "model": ("model", "n_slots", "top_k", "forget_rate", "addressing_threshold", "connector", "latent_dim",
              "channels", "memae_slots", "memae_shrink_threshold", "memae_entropy_weight", "kl_weight", "ssl",
              "ssl_weight", "ssl_temperature", "ssl_augment", "ssl_in_validation"),
    "training": ("epochs", "min_steps", "patience", "patience_steps", "batch_size", "lr", "weight_decay",
                 "precision", "checkpoint_seconds", "compile"),
    "scoring": ("threshold_percentile", "score"),
    "run control": ("device", "jobs", "threads", "draw_figures", "output_dir"),
}


def choices():
    """The metavar of each setting with a fixed set of values: its choices."""
    from models import PRESETS, SSL_KINDS
    from tool.classical import CLASSICAL
    from tool.data.protocol import PROTOCOLS

    return {"protocol": PROTOCOLS, "model": (*PRESETS, *CLASSICAL), "connector": ("leaky_relu", "relu"),
            "precision": ("fp32", "bf16"), "ssl": ("none", *SSL_KINDS), "device": ("auto", "cpu", "cuda", "cuda:N", "mps"),
            "score": ("best", "recon", "...")}


class _Flag(argparse.Action):
    """A boolean setting as --name / --no-name; --name VALUE (true, false, ...) is the older spelling,
    still taken."""

    def __call__(self, parser, namespace, values, option_string=None):
        if option_string.startswith("--no-"):
            value = False
        elif values is None:
            value = True
        else:
            try:
                value = _bool(values)
            except ValueError:
                raise UserError(f"{option_string} takes no value (or true / false): got {values!r}") from None
        setattr(namespace, self.dest, value)


def add_setting_flags(parser, defaults, help_texts=None):
    """One flag per setting, typed from its default, in the --help group of GROUPS it belongs to."""
    grouped = {key: name for name, keys in GROUPS.items() for key in keys}
    groups = {name: parser.add_argument_group(name) for name in [*GROUPS, "other"]}
    fixed = choices()
    for key, default in defaults.items():
        flag = "--" + key.replace("_", "-")
        group = groups[grouped.get(key, "other")]
        help_text = _short((help_texts or {}).get(key, "")).replace("%", "%%")  # argparse formats help with %
        shown = "none" if default is None else " ".join(map(str, default)) if isinstance(default, list) else default
        help_text = f"{help_text} [{shown}]" if help_text else f"[{shown}]"
        metavar = "{" + ",".join(fixed[key]) + "}" if key in fixed else None
        if isinstance(default, bool):
            group.add_argument(f"--no-{flag[2:]}", dest=key, nargs=0, action=_Flag, default=argparse.SUPPRESS,
                               help=argparse.SUPPRESS)
            group.add_argument(flag, dest=key, nargs="?", action=_Flag, default=argparse.SUPPRESS,
                               help=f"{help_text}; --no-{flag[2:]}: off", metavar="true|false")
        elif isinstance(default, (list, tuple)) or key in LIST_TYPES:
            kind = LIST_TYPES.get(key) or (type(default[0]) if default else str)
            group.add_argument(flag, dest=key, nargs="*", type=kind, default=argparse.SUPPRESS, help=help_text,
                               metavar=kind.__name__.upper())
        else:
            kind = SCALAR_TYPES.get(key) or type(default)
            if key in OPTIONAL:
                kind = _none_or(kind)
            group.add_argument(flag, dest=key, type=kind, default=argparse.SUPPRESS, help=help_text,
                               metavar=metavar or kind.__name__.upper())


def _short(comment, limit=58):
    """A constant's comment in main.py cut to its first clause (main.py keeps the whole of it)."""
    import re

    text = re.split(r"; | \((?=released|paper|MemAE|fmnist|results|README|docs|models|tool)", comment,
                    maxsplit=1)[0].strip().rstrip(".,")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def __init__(self, prog):
        super().__init__(prog, max_help_position=32, width=min(120, max(80, __import__("shutil").get_terminal_size().columns)))

    def _format_usage(self, usage, actions, groups, prefix):  # the usage line names the forms, not every flag
        return f"usage: {self._prog} [CONFIG.py] [--SETTING VALUE ...] | --ACTION RUN_DIR [...]\n\n"


def make_parser(defaults, description, help_texts=None, prog="main.py"):
    parser = OneLineParser(prog=prog, description=description, allow_abbrev=False, formatter_class=_Formatter)
    add_setting_flags(parser, defaults, help_texts)
    for old, (new, why) in RENAMED.items():
        parser.add_argument(old, nargs="*", action=_Renamed, help=argparse.SUPPRESS, new=new, why=why)
    return parser


class _Renamed(argparse.Action):
    def __init__(self, *args, new, why, **kwargs):
        super().__init__(*args, **kwargs)
        self.new, self.why = new, why

    def __call__(self, parser, namespace, values, option_string=None):
        raise UserError(f"{option_string} is now {self.new}: {self.why}.")


def overrides_from(args, defaults):
    """The settings given on the command line: {key: value}."""
    given = {}
    for key in defaults:
        if hasattr(args, key):
            value = getattr(args, key)
            given[key] = list(value) if isinstance(value, list) else value
            if key in OPTIONAL and isinstance(value, list) and [str(v).lower() for v in value] == ["none"]:
                given[key] = None  # --classes none: every class
    return given
