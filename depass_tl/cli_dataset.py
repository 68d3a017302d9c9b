"""``depass-tl dataset``: attribute a logit over every prompt of a JSON-lines file, into Parquet.

A thin wrapper over :func:`depass_tl.run_dataset`::

    depass-tl dataset prompts.jsonl --target-field answer --contrast-field wrong --out attrs.parquet

Each line of the file is one JSON object; ``--prompt-field`` (default ``prompt``) holds the text and
``--target-field`` the answer token (or ``--target`` gives one answer for every prompt). Running the
same command again resumes: prompts already in ``--out`` are skipped. Under ``torchrun`` the prompts
are split over the processes (each writes its own files into ``--out``), e.g.
``torchrun --nproc_per_node 4 -m depass_tl.cli dataset prompts.jsonl ... --device cuda``: the
process group is initialised here (NCCL for CUDA, gloo otherwise) and each process uses
``cuda:<LOCAL_RANK>``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "dataset"]

COMPONENTS = ("tokens", "heads", "sources")


def add_parser(sub: Any) -> None:
    """Add the ``dataset`` subcommand to the ``depass-tl`` subparsers ``sub``."""
    p = sub.add_parser(
        "dataset",
        help="attribute a logit over every prompt of a .jsonl file, streamed to Parquet (resumable)",
        description="Attribute the target logit (difference) at each prompt's last token to components, for every "
                    "prompt of a JSON-lines file; rows go to a Parquet dataset folder, resumable, split over "
                    "torchrun processes.",
    )
    p.add_argument("prompts", help="a .jsonl file: one JSON object per line")
    p.add_argument("--prompt-field", default="prompt", help="the field holding the prompt text (default prompt)")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-field", help="the field holding each prompt's answer token, e.g. ' Mary'")
    target.add_argument("--target", help="one answer token for every prompt")
    contrast = p.add_mutually_exclusive_group()
    contrast.add_argument("--contrast-field", help="the field holding a token whose logit is subtracted")
    contrast.add_argument("--contrast", help="one token whose logit is subtracted, for every prompt")
    p.add_argument("--id-field", default=None, help="the field holding each prompt's id (default: its index)")
    p.add_argument("--out", required=True, help="the output folder (a Parquet dataset; reused to resume)")
    p.add_argument("--model", default="ioi",
                   help="a shipped toy model (ioi, induction, facts; default ioi), a TransformerLens model name or a "
                        "local Hugging Face model folder")
    p.add_argument("--components", choices=COMPONENTS, default="tokens", help="what to attribute to (default tokens)")
    p.add_argument("--mlp-rule", default="softmax", help="the MLP rule (default softmax)")
    p.add_argument("--temperature", type=float, default=0.1, help="softmax temperature (default 0.1)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts replayed together (default 8)")
    p.add_argument("--rows-per-file", type=int, default=256, help="prompts per Parquet file (default 256)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu; under torchrun 'cuda' means "
                                                   "cuda:<LOCAL_RANK>)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _read_jsonl(path: str, fields: dict[str, str | None]) -> dict[str, list[Any]]:
    """Per wanted field, its values over the file's lines (blank lines skipped)."""
    from depass_tl.errors import DePassError

    file = Path(path)
    if not file.is_file():
        raise DePassError(f"{path!r} is not a file; give a .jsonl file with one JSON object per line.")
    values: dict[str, list[Any]] = {k: [] for k, f in fields.items() if f is not None}
    with file.open(encoding="utf-8") as lines:
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DePassError(f"{path} line {n} is not JSON ({e.msg}).") from None
            if not isinstance(record, dict):
                raise DePassError(f"{path} line {n} is a JSON {type(record).__name__}, not an object.")
            for key in values:
                field = fields[key]
                if field not in record:
                    raise DePassError(f"{path} line {n} has no field {field!r} (it has {', '.join(map(repr, record))}).")
                values[key].append(record[field])
    if not values["prompt"]:
        raise DePassError(f"{path} holds no prompts.")
    bad = [i for i, p in enumerate(values["prompt"]) if not isinstance(p, str) or not p]
    if bad:
        raise DePassError(f"{path}: the prompt of record {bad[0]} is not a non-empty string.")
    return values


def _load_model(name: str, device: str) -> tuple[Any, str]:
    """A toy model by name, else TransformerLens's loader for the installed version; returns (model, description)."""
    import warnings

    from depass_tl.errors import DePassError
    from depass_tl.toy import available, default_model_class, load

    if name in available():
        return load(name, device=device)[0], f"toy model {name!r}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if default_model_class() == "hooked" and not (Path(name) / "config.json").exists():
                from transformer_lens import HookedTransformer

                return HookedTransformer.from_pretrained(name, device=device).eval(), repr(name)
            from transformer_lens.model_bridge import TransformerBridge

            return TransformerBridge.boot_transformers(name, device=device).eval(), repr(name)
    except Exception as e:  # unknown names, the hub offline, conversion failures: one line
        first = " ".join(str(e).split())[:300]
        raise DePassError(f"could not load model {name!r} ({type(e).__name__}: {first}); use a toy model "
                          f"({', '.join(available())}), a TransformerLens model name or a local model folder.") from e


def _init_distributed(device: str) -> tuple[str, bool]:
    """Under torchrun (``WORLD_SIZE`` > 1): initialise the process group; returns (device, whether it was started here)."""
    import torch.distributed as dist

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device, False
    cuda = device.startswith("cuda")
    if cuda and device == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if cuda:
        import torch

        torch.cuda.set_device(torch.device(device))
    dist.init_process_group("nccl" if cuda else "gloo")
    return device, True


def dataset(args: argparse.Namespace) -> list[str]:
    """Run ``depass-tl dataset``; returns the lines to print (empty on ranks other than 0)."""
    import torch.distributed as dist

    import depass_tl
    from depass_tl.errors import DePassError

    for flag, value in (("--batch-size", args.batch_size), ("--rows-per-file", args.rows_per_file)):
        if value < 1:
            raise DePassError(f"{flag} must be at least 1, got {value}.")
    fields = {"prompt": args.prompt_field, "target": args.target_field, "contrast": args.contrast_field,
              "id": args.id_field}
    data = _read_jsonl(args.prompts, fields)
    n = len(data["prompt"])
    targets, contrasts = data.get("target", [args.target] * n), data.get("contrast", [args.contrast] * n)
    same = [i for i, (t, c) in enumerate(zip(targets, contrasts)) if c is not None and c == t]
    if same:  # its logit difference, and every attribution of it, would be 0: a data error, like a missing field
        raise DePassError(
            f"{args.prompts}: the contrast of record {same[0]} is its target {targets[same[0]]!r} ({len(same)} of {n} "
            "records); the contrast must be a different token."
        )
    device, started = _init_distributed(args.device)
    try:
        model, description = _load_model(args.model, device)
        specs = {"tokens": depass_tl.tokens, "heads": depass_tl.heads, "sources": depass_tl.sources}
        contrast = data.get("contrast", args.contrast)
        done = depass_tl.run_dataset(
            model, data["prompt"], target=data.get("target", args.target), contrast=contrast,
            components=specs[args.components](), mlp_rule=args.mlp_rule, temperature=args.temperature,
            batch_size=args.batch_size, out=args.out, ids=data.get("id"), rows_per_file=args.rows_per_file,
            progress=not args.no_progress,
        )
        if done.rank != 0:
            return []
        errors = depass_tl.read_results(args.out, columns=["completeness_error"])["completeness_error"]
        quantity = "logit" if contrast is None else "logit difference"
        rate = f" ({done.written / done.seconds:.1f} prompts/s)" if done.written else ""
        return [
            f"depass-tl dataset: {n} prompts from {args.prompts}, {description}, components {args.components}, "
            f"mlp_rule {args.mlp_rule}, attributing the {quantity} at each prompt's last token",
            f"wrote {done.written} rows to {args.out} ({done.skipped} already there) in {done.seconds:.1f} s{rate} "
            f"on {done.world_size} process{'es' if done.world_size > 1 else ''}",
            f"completeness: max |sum of attributions - clean| over {len(errors)} rows = {float(errors.max()):.2e}",
            f"read with depass_tl.read_results({args.out!r}) or pandas.read_parquet({args.out!r})",
        ]
    finally:
        if started:
            dist.destroy_process_group()
