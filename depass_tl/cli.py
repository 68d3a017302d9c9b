"""``depass-tl``: the command line, a thin wrapper over the public API.

``depass-tl attribute PROMPT --target T`` runs the model once (``depass_tl.capture``), replays the
chosen component sets (``depass_tl.replay``), and prints a ranked table of each component's exact
contribution to the target logit (or, with ``--contrast``, the logit difference) at the prompt's
last position, with the sum over components next to the clean value and the completeness error.
``--html`` writes the explorer (:mod:`depass_tl.viz.explorer`): one self-contained interactive page,
computed from the same capture replayed once per MLP rule. ``--png`` writes the figures of
:mod:`depass_tl.viz`.

By default it uses the shipped ``ioi`` toy model (no download)::

    depass-tl attribute "When Mary and John went to the store, John gave a drink to" --target " Mary"

``--model`` takes a toy model name (``ioi``, ``induction``, ``facts``; a ``HookedTransformer`` on
TransformerLens 2.x / 3.x, a ``TransformerBridge`` on 4.x), any TransformerLens model name (``gpt2``;
``HookedTransformer.from_pretrained`` on TL 2.x / 3.x, ``TransformerBridge.boot_transformers`` on TL 4,
both from the Hugging Face hub), or a local Hugging Face model folder with its tokenizer (loaded as a
``TransformerBridge``, TL 3.x / 4.x).
Errors on user input print one line, ``depass-tl: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["main", "build_parser"]

PROG = "depass-tl"
COMPONENT_SETS = ("tokens", "heads", "sources")
EXPLORER_TOP_K = 8  # the explorer offers the model's top predictions as answers and contrasts


# ------------------------------------------------------------------------------------ parsing
def _rule_arg(text: str) -> str:
    from depass_tl.replay.rules import rule_names  # the rule registry (imports torch: only when the flag is given)

    if text not in rule_names():
        raise argparse.ArgumentTypeError(f"unknown MLP rule {text!r}; choose one of {', '.join(rule_names())}")
    return text


def _components_arg(text: str) -> tuple[str, ...]:
    parts = tuple(p.strip() for p in text.split(",") if p.strip())
    bad = [p for p in parts if p not in COMPONENT_SETS]
    if not parts or bad:
        raise argparse.ArgumentTypeError(
            f"expected one or more of {', '.join(COMPONENT_SETS)} separated by commas, got {text!r}"
        )
    return tuple(dict.fromkeys(parts))


class _Parser(argparse.ArgumentParser):
    """``argparse`` with the house error format: one line on stderr, exit status 2 (no usage block)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {_one_line(message)} (see {PROG} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The ``argparse`` parser of ``depass-tl``."""
    parser = _Parser(
        prog=PROG,
        description="Exact attribution of a logit to tokens and heads by a decomposed forward pass (DePass).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    att = sub.add_parser(
        "attribute",
        help="rank tokens and heads by their contribution to a logit (difference)",
        description="Rank components by their exact contribution to the target logit at the prompt's last position.",
    )
    att.add_argument("prompt", help="the prompt (the logits read are those after its last token)")
    att.add_argument("--target", required=True, help="the answer token, e.g. ' Mary' (mind the leading space)")
    att.add_argument("--contrast", default=None, help="subtract this token's logit (a logit difference), e.g. ' John'")
    att.add_argument(
        "--model", default="ioi",
        help="a shipped toy model (ioi, induction, facts; default ioi, offline) or a TransformerLens model name "
             "(e.g. gpt2; downloads from the Hugging Face hub)",
    )
    att.add_argument(
        "--components", type=_components_arg, default=("tokens", "heads"),
        help="what to attribute to, comma-separated: tokens (depass_tl.tokens()), heads (depass_tl.heads() over "
             "every layer), sources (depass_tl.sources()); default tokens,heads",
    )
    att.add_argument("--mlp-rule", type=_rule_arg, default="softmax",
                     help="how MLP activations are split among components: softmax (default), ratio, max, or "
                          "another registered rule (depass_tl.replay.rules)")
    att.add_argument("--temperature", type=float, default=0.1, help="softmax temperature (default 0.1)")
    att.add_argument("--top", type=int, default=10, help="rows per table (default 10)")
    att.add_argument("--device", default="cpu", help="torch device for the model (default cpu)")
    att.add_argument("--html", default=None, metavar="PATH",
                     help="write an interactive page (.html, self-contained, opens offline): click tokens and heads, "
                          f"switch the answer and contrast among the top {EXPLORER_TOP_K} predictions and the MLP rule")
    att.add_argument("--png", default=None, metavar="PATH",
                     help="write the figures as .png (several figures: PATH-stem-<figure>.png)")
    from depass_tl.cli_dataset import add_parser as add_dataset_parser  # `depass-tl dataset` (its own module)

    add_dataset_parser(sub)
    return parser


# ------------------------------------------------------------------------------------ the run
@dataclass(frozen=True)
class _Loaded:
    model: Any
    tokens: Any  # [1, pos] ids
    str_tokens: tuple[str, ...]
    target: int
    contrast: int | None
    description: str  # e.g. "toy model 'ioi'"
    decode: Callable[[int], str]  # token id -> its string


MAX_QUOTED = 80  # user text longer than this is shortened in error lines


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _shorten(text: str) -> str:
    """A long piece of user text as its start, its end and its length."""
    return text if len(text) <= MAX_QUOTED else f"{text[:50]}…{text[-20:]} ({len(text)} characters)"


def _error_line(message: str, args: argparse.Namespace | None) -> str:
    """The one error line: the message on one line, with long user text (the prompt, tokens) shortened."""
    line = _one_line(message)
    for text in (getattr(args, "prompt", None), getattr(args, "target", None), getattr(args, "contrast", None)):
        if isinstance(text, str) and len(text) > MAX_QUOTED:
            for form in (repr(text), _one_line(repr(text)), text, _one_line(text)):
                line = line.replace(form, repr(_shorten(text)))
    return f"{PROG}: error: {line}\n"


def _check_contrast(target: str | None, contrast: str | None, ids: tuple[int, int | None] | None = None) -> None:
    """Refuse a ``--contrast`` that is the ``--target`` token: the logit difference, and every component's share of it,
    would be 0. Compared as text before any model work, and again as token ids (``ids``) once they are known."""
    from depass_tl.errors import DePassError

    if contrast is None or (contrast != target if ids is None else ids[1] != ids[0]):
        return
    same = "" if ids is None else f" (both are token {ids[0]})"
    raise DePassError(
        f"--contrast {contrast!r} is the same token as --target {target!r}{same}; the contrast must be a different "
        "token (logit(t) − logit(t) is 0 for every component), e.g. --target \" Mary\" --contrast \" John\", or leave "
        "--contrast out to attribute the target's logit alone."
    )


def _check_args(args: argparse.Namespace) -> None:
    from depass_tl._checks import check_device
    from depass_tl.errors import DePassError

    if not args.prompt.strip():
        raise DePassError("the prompt is empty; pass the text to attribute, e.g. \"When Mary and John went ...\".")
    if not args.target:
        raise DePassError("--target is empty; pass one token, e.g. --target \" Mary\".")
    if args.contrast is not None and not args.contrast:
        raise DePassError("--contrast is empty; pass one token, e.g. --contrast \" John\", or leave it out.")
    _check_contrast(args.target, args.contrast)
    if args.top < 1:
        raise DePassError(f"--top must be at least 1, got {args.top}.")
    if not args.temperature > 0:
        raise DePassError(f"--temperature must be > 0, got {args.temperature}.")
    check_device(args.device)
    for flag, path, suffix in (("--html", args.html, ".html"), ("--png", args.png, ".png")):
        if path is None:
            continue
        p = Path(path)
        if p.suffix.lower() != suffix:
            raise DePassError(f"{flag} needs a file name ending in {suffix}, got {path!r}.")
        if not p.parent.is_dir():
            raise DePassError(f"{flag}: the folder {str(p.parent)!r} does not exist; create it first.")
    if args.png is not None:  # the explorer page (--html) needs no plotting library
        from depass_tl.viz import resolve_backend

        resolve_backend(None)


def _load_toy(args: argparse.Namespace) -> _Loaded:
    from depass_tl.errors import DePassError
    from depass_tl.toy import load
    from depass_tl.toy.encoder import split_words

    model, enc = load(args.model, device=args.device)

    def token(flag: str, text: str) -> int:
        pieces = split_words(text)
        if len(pieces) != 1:
            raise DePassError(f"{flag} {text!r} is {len(pieces)} tokens {pieces}, not one; pick a single token.")
        if text not in enc.vocab and f" {text}" in enc.vocab:
            raise DePassError(f"{flag} {text!r} is not in the vocabulary of toy model {args.model!r}; did you mean {' ' + text!r}?")
        return enc.token_id(text)

    tokens = enc.encode(args.prompt)
    target = token("--target", args.target)
    contrast = None if args.contrast is None else token("--contrast", args.contrast)
    return _Loaded(model, tokens, tuple(enc.to_str_tokens(tokens)), target, contrast,
                   f"toy model {args.model!r}", lambda i: enc.vocab[i])


def _official_name(name: str) -> str | None:
    """TL's official name for ``name`` (None if TL does not know it); TL 4 moved the resolver."""
    try:
        from transformer_lens.supported_models import get_official_model_name  # TL 4
    except ImportError:
        from transformer_lens.loading_from_pretrained import get_official_model_name  # TL 2.x / 3.x
    try:
        return get_official_model_name(name)
    except ValueError:
        return None


def _pretrained(name: str, device: str, local: bool) -> tuple[Any, str]:
    """``HookedTransformer.from_pretrained`` (TL 2.x / 3.x) or ``TransformerBridge.boot_transformers`` (TL 4,
    and local folders on TL 3.x: ``from_pretrained`` needs an official model name)."""
    import warnings

    from depass_tl.toy import default_model_class

    if default_model_class() == "hooked" and not (local and _has("transformer_lens.model_bridge")):
        from transformer_lens import HookedTransformer

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.9 deprecates from_pretrained
            return HookedTransformer.from_pretrained(name, device=device), "HookedTransformer.from_pretrained"
    from transformer_lens.model_bridge import TransformerBridge

    return TransformerBridge.boot_transformers(name, device=device), "TransformerBridge.boot_transformers"


def _load_tl(args: argparse.Namespace) -> _Loaded:
    from depass_tl.errors import DePassError
    from depass_tl.toy import available

    local = (Path(args.model) / "config.json").exists()
    if not local and _official_name(args.model) is None:
        raise DePassError(
            f"unknown model {args.model!r}: not a toy model ({', '.join(available())}), not a TransformerLens model "
            "name (see transformer_lens.supported_models.OFFICIAL_MODEL_NAMES) and not a folder with a config.json."
        )
    try:
        model, how = _pretrained(args.model, args.device, local)
    except Exception as e:  # network, hub, or weight-conversion failures: report them on one line
        first = _one_line((str(e).strip().splitlines() or [""])[0])[:300]
        raise DePassError(
            f"could not load {args.model!r} ({type(e).__name__}: {first}). Models other than the toys come from "
            f"the Hugging Face hub (or a local folder); check the connection, or use a toy model offline "
            f"(--model {' | '.join(available())})."
        ) from e
    model.eval()

    def token(flag: str, text: str) -> int:
        ids = model.to_tokens(text, prepend_bos=False)[0]
        if ids.numel() != 1:
            pieces = model.to_str_tokens(text, prepend_bos=False)
            raise DePassError(f"{flag} {text!r} is {ids.numel()} tokens {pieces}, not one; pick a single token.")
        return int(ids[0])

    from depass_tl.tokenization import to_tokens

    tokens = to_tokens(model, args.prompt)  # not TL's to_tokens: it would cut a prompt longer than n_ctx silently
    target = token("--target", args.target)
    contrast = None if args.contrast is None else token("--contrast", args.contrast)
    strs = tuple(model.to_str_tokens(tokens[0]))
    return _Loaded(model, tokens, strs, target, contrast, f"{args.model!r} ({how})",
                   lambda i: str(model.to_single_str_token(i)))


def _load(args: argparse.Namespace) -> _Loaded:
    from depass_tl.errors import DePassError
    from depass_tl.toy import available

    loaded = _load_toy(args) if args.model in available() else _load_tl(args)
    _check_contrast(args.target, args.contrast, (loaded.target, loaded.contrast))  # two spellings of one token
    n_ctx = int(loaded.model.cfg.n_ctx)
    if loaded.tokens.shape[1] > n_ctx:
        raise DePassError(
            f"the prompt is {loaded.tokens.shape[1]} tokens, longer than the model's context ({n_ctx}); shorten it."
        )
    return loaded


def _specs(components: Sequence[str]) -> dict[str, Any]:
    import depass_tl

    make: dict[str, Callable[[], Any]] = {"tokens": depass_tl.tokens, "heads": depass_tl.heads,
                                           "sources": depass_tl.sources}
    return {name: make[name]() for name in components}


# ------------------------------------------------------------------------------------ tables
def _fmt(v: float) -> str:
    return f"{v:+.4f}"


def _ranked(rows: list[tuple[str, str, float]], top: int) -> list[str]:
    """``rank  label  detail  value`` lines for the ``top`` rows by |value|."""
    order = sorted(rows, key=lambda r: -abs(r[2]))[:top]
    width = max([len(r[0]) for r in order] + [9])
    dwidth = max([len(r[1]) for r in order] + [0])
    lines = [f"  {'rank':>4}  {'component':<{width}}  {'':<{dwidth}}  contribution".rstrip()]
    for i, (label, detail, v) in enumerate(order, 1):
        lines.append(f"  {i:>4}  {label:<{width}}  {detail:<{dwidth}}  {_fmt(v):>12}")
    return lines


def _summary(dc: Any, attrs: Any, clean: float, quantity: str) -> list[str]:
    total = float(attrs.sum())
    errs = dc.completeness_error()
    worst = max(errs.values())
    groups = dc.n_components // dc.group_size
    sums = attrs.reshape(groups, dc.group_size).sum(1)
    gap = float((sums - clean).abs().max())
    label = "sum over components" if groups == 1 else f"sum over each of the {groups} groups (max gap shown)"
    return [
        f"  {label}: {_fmt(float(sums[0]) if groups > 1 else total)}   clean {quantity}: {_fmt(clean)}",
        f"  completeness error: |sum - clean| = {gap:.2e}; max over all stored hooks and logits = {worst:.2e}",
    ]


def _table(name: str, dc: Any, attrs: Any, loaded: _Loaded, top: int, clean: float, quantity: str) -> list[str]:
    import re

    values = attrs[:, 0].tolist()
    labels = dc.labels
    if name == "tokens":
        rows = []
        others = []
        for label, v in zip(labels, values):
            m = re.fullmatch(r"tok(\d+)", label)
            if m:
                p = int(m.group(1))
                rows.append((f"pos {p}", repr(loaded.str_tokens[p]), v))
            else:
                others.append((label, v))
        head = f"Tokens: top {min(top, len(rows))} of {len(rows)} by |contribution| (depass_tl.tokens())"
        lines = [head] + _ranked(rows, top)
        lines += [f"  {label}: {_fmt(v)}" for label, v in others]
    elif name == "heads":
        rows = [(label, "", v) for label, v in zip(labels, values) if re.fullmatch(r"L\d+H\d+", label)]
        head = (f"Heads: top {min(top, len(rows))} of {len(rows)} by |contribution| (depass_tl.heads() over every "
                "layer; each value = the head's direct + indirect effect)")
        lines = [head] + _ranked(rows, top)
        per_layer = []
        K = dc.group_size
        for g in range(dc.n_components // K):
            grp = list(zip(labels[g * K:(g + 1) * K], values[g * K:(g + 1) * K]))
            heads_sum = sum(v for label, v in grp if re.fullmatch(r"L\d+H\d+", label))
            extra = ", ".join(f"{label} {_fmt(v)}" for label, v in grp if not re.fullmatch(r"L\d+H\d+", label))
            per_layer.append(f"  layer {g}: heads {_fmt(heads_sum)}, {extra}")
        lines += ["  each layer's heads + rest + bias add up to the total:"] + per_layer
    else:
        bias = labels[-1]
        rows = [(label, "", v) for label, v in zip(labels, values) if label != bias]
        head = (f"Sources: top {min(top, len(rows))} of {len(rows)} by |contribution| (depass_tl.sources(); each path "
                "is credited to the first head or MLP on it)")
        lines = [head] + _ranked(rows, top) + [f"  {bias}: {_fmt(values[-1])}"]
    return lines + _summary(dc, attrs, clean, quantity)


# ------------------------------------------------------------------------------------ figures
def _figures(caches: dict[str, Any], loaded: _Loaded, quantity: str, backend: str) -> dict[str, Any]:
    from depass_tl import viz

    kw: dict[str, Any] = dict(incorrect_tokens=loaded.contrast, target=quantity, backend=backend,
                              str_tokens=loaded.str_tokens)
    figs: dict[str, Any] = {}
    if "tokens" in caches:
        figs["tokens"] = viz.token_heatmap(caches["tokens"], loaded.target, **kw)
        figs["token-flow"] = viz.flow(caches["tokens"], loaded.target, **kw)
    kw.pop("str_tokens")
    if "heads" in caches:
        figs["heads"] = viz.head_grid(caches["heads"], loaded.target, **kw)
    if "sources" in caches:
        figs["sources-heads"] = viz.head_grid(caches["sources"], loaded.target, **kw)
        figs["sources-flow"] = viz.flow(caches["sources"], loaded.target, str_tokens=loaded.str_tokens, **kw)
    return figs


def _write_explorer(args: argparse.Namespace, run: Any, loaded: _Loaded) -> str:
    """The explorer page from the same capture, replayed once per MLP rule."""
    from depass_tl import viz

    caches = viz.explorer_caches(run, temperature=args.temperature)
    data = viz.explorer_data(
        caches, target=loaded.target, contrast=loaded.contrast, top_k=EXPLORER_TOP_K, decode=loaded.decode,
        str_tokens=loaded.str_tokens, rule=args.mlp_rule, prompt=args.prompt, model=loaded.description,
    )
    return str(viz.save_explorer(data, args.html))


def _write_figures(args: argparse.Namespace, caches: dict[str, Any], loaded: _Loaded, quantity: str) -> list[str]:
    from depass_tl import viz

    written = []
    if args.png is not None:
        figs = _figures(caches, loaded, quantity, viz.resolve_backend("matplotlib" if _has("matplotlib") else None))
        path = Path(args.png)
        for key, fig in figs.items():
            out = path if len(figs) == 1 else path.with_name(f"{path.stem}-{key}{path.suffix}")
            written.append(str(viz.save(fig, out)))
    return written


def _plain_quantity(args: argparse.Namespace) -> str:
    """The figures' name of what is attributed, e.g. ``logit(“Mary”) − logit(“John”)``."""
    from depass_tl.viz._backend import describe_target

    return describe_target(args.target, args.contrast)


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def attribute(args: argparse.Namespace) -> list[str]:
    """Run ``attribute``; returns the lines to print. Raises DePassError on bad input."""
    import torch

    import depass_tl
    from depass_tl.replay.rules import get_rule

    _check_args(args)
    loaded = _load(args)
    specs = _specs(args.components)
    n_layers = int(loaded.model.cfg.n_layers)
    extra = set().union(*(spec.required_hooks(n_layers) for spec in specs.values()))
    if args.html is not None:
        from depass_tl.viz import explorer_hooks

        extra |= explorer_hooks(n_layers)
    with torch.no_grad():
        run = depass_tl.capture(loaded.model, loaded.tokens, extra_hooks=extra)
        caches = {
            name: depass_tl.replay(run, spec, mlp_rule=args.mlp_rule, temperature=args.temperature)
            for name, spec in specs.items()
        }
    last = int(loaded.tokens.shape[1]) - 1
    target_s = repr(args.target)
    quantity = f"logit[{target_s}]" if args.contrast is None else f"logit[{target_s}] − logit[{args.contrast!r}]"
    clean_logits = next(iter(caches.values())).clean_last_logits[0]
    clean = float(clean_logits[loaded.target])
    if loaded.contrast is not None:
        clean -= float(clean_logits[loaded.contrast])
    temperature = getattr(get_rule(args.mlp_rule, temperature=args.temperature), "temperature", None)
    lines = [
        f"{PROG} attribute: {loaded.description}, mlp_rule={args.mlp_rule}"
        + (f" (temperature {temperature})" if temperature is not None else ""),
        f"prompt: {len(loaded.str_tokens)} tokens; attributing {quantity} at position {last} "
        f"({loaded.str_tokens[last]!r}); the model's top prediction there: {loaded.decode(int(clean_logits.argmax()))!r}",
        f"clean {quantity} = {_fmt(clean)}",
    ]
    if loaded.contrast is None:
        lines.append("(a single logit includes what all candidates share; --contrast gives a logit difference)")
    lines.append("")
    for name, dc in caches.items():
        attrs = dc.logit_attrs(loaded.target, incorrect_tokens=loaded.contrast).detach().double().cpu()
        lines += _table(name, dc, attrs, loaded, args.top, clean, quantity) + [""]
    written = []
    if args.html is not None:
        with torch.no_grad():
            written.append(_write_explorer(args, run, loaded))
    written += _write_figures(args, caches, loaded, _plain_quantity(args))
    lines += [f"wrote {path}" for path in written]
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``depass-tl`` console script; returns the exit status (2 on bad input)."""
    from depass_tl.errors import DePassError

    args = build_parser().parse_args(argv)
    try:
        if args.command == "dataset":
            from depass_tl.cli_dataset import dataset

            _check_contrast(args.target, args.contrast)  # one pair for every prompt (None where read per record)
            lines = dataset(args)
        else:
            lines = attribute(args)
    except DePassError as e:
        sys.stderr.write(_error_line(str(e), args))
        return 2
    sys.stdout.write("\n".join(lines).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
