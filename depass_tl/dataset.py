"""Dataset runs: one logit (or logit difference) attributed over many prompts, streamed to Parquet.

:func:`run_dataset` captures and replays the prompts batch by batch (``capture`` + ``replay`` keeping
only ``unembed.hook_in``), so memory stays bounded by one batch whatever the number of prompts, and
writes one row per prompt: its tokens, the target, the clean value, every component's label and
attribution, and the completeness errors. :func:`read_results` reads the rows back as a
``pandas.DataFrame``.

**Output.** ``out`` is a folder holding a Parquet *dataset* (the layout pandas, pyarrow, DuckDB and
Spark read as one table, e.g. ``pandas.read_parquet(out)``): files ``part-<first index>-r<rank>.parquet``
of whole rows, and ``_depass_dataset.json`` with the run's settings. Each file is written under a
temporary name and renamed once complete, so an interrupted run leaves only whole files behind.

**Resuming.** Running again on the same ``out`` skips the prompts whose rows are already there (each
row records its prompt's index and a hash of the prompt with its target and contrast, checked against
those given; different settings are refused, never mixed: the model's shape and weights (a fingerprint),
the component spec with its tensors' values, the rule, the dtype, ``prepend_bos`` and ``padding_side``). At most ``rows_per_file`` prompts of work are lost to
an interruption.

**Several processes.** Under ``torch.distributed`` (started with ``torchrun``; the process group
initialised by the caller) the prompts still to do are cut into batches, batch ``j`` going to rank
``j mod world_size``; each rank writes its own files into ``out`` (which every rank must see: one
machine, or a shared file system), nothing is gathered, and every rank returns once all have
finished. Rank 0 reads what is already done and tells the others, so resuming works with any number
of processes.

Columns (one row per prompt):

* ``index`` (int64): the prompt's position in ``prompts``; ``id`` (string): ``ids[index]`` or the index;
  ``key`` (string): a hash of the prompt, its target and contrast (what resuming checks);
* ``prompt`` (string; null for token-id input), ``tokens`` (list of int64: the prompt's own tokens,
  without padding), ``str_tokens`` (list of string; null without a tokenizer);
* ``target`` / ``contrast`` (int64 token ids; ``contrast`` null without one), ``clean`` (float64: the
  clean logit, or logit difference, at the prompt's last token);
* ``labels`` (list of string) and ``attributions`` (list of float64): one per component, in the order
  of the spec (token components ``tok{i}`` count the prompt's own positions, padding left out);
* ``completeness_error``: the largest ``|Σ attributions − clean|`` over the spec's groups (each group
  sums to the clean value); ``hook_completeness_error``: the largest error of the decomposed
  ``unembed.hook_in`` at any of the prompt's positions.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from depass_tl._checks import checked
from depass_tl._types import COMPONENTS_HINT, Model
from depass_tl.api import replay
from depass_tl.capture import capture, single_token_fn
from depass_tl.components import ComponentSpec, TokenSpec
from depass_tl.distributed import Ranks, ranks
from depass_tl.errors import DePassError
from depass_tl.replay.rules import DEFAULT_TEMPERATURE, RuleLike, get_rule

__all__ = ["DatasetRun", "run_dataset", "read_results", "SETTINGS_FILE"]

SETTINGS_FILE = "_depass_dataset.json"
FORMAT = "depass_tl.dataset/2"  # 2: row keys hash the target and contrast; settings hold the weights' fingerprint
_PART = re.compile(r"^part-(\d+)-r(\d+)\.parquet$")
_TOKEN_LABEL = re.compile(r"^tok(\d+)$")

Token = str | int


@dataclass(frozen=True)
class DatasetRun:
    """What one call of :func:`run_dataset` did (on this process).

    Attributes:
        out: the output folder.
        n_prompts: prompts given.
        written: rows this process wrote in this call.
        skipped: prompts whose rows were already in ``out`` (not redone).
        seconds: wall-clock time of this call on this process.
        rank, world_size: this process's rank and the number of processes (0 and 1 alone).
    """

    out: Path
    n_prompts: int
    written: int
    skipped: int
    seconds: float
    rank: int = 0
    world_size: int = 1


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([
        ("index", pa.int64()), ("id", pa.string()), ("key", pa.string()), ("prompt", pa.string()),
        ("tokens", pa.list_(pa.int64())), ("str_tokens", pa.list_(pa.string())), ("target", pa.int64()),
        ("contrast", pa.int64()), ("clean", pa.float64()), ("labels", pa.list_(pa.string())),
        ("attributions", pa.list_(pa.float64())), ("completeness_error", pa.float64()),
        ("hook_completeness_error", pa.float64()),
    ])


# ------------------------------------------------------------------------------------ inputs
def _prompt_list(prompts: Any) -> tuple[list[str] | list[list[int]], bool]:
    """``(prompts, is_text)``: strings, or token-id lists (from lists, 1-D tensors or a 2-D tensor)."""
    if isinstance(prompts, (str, bytes)):
        raise DePassError("prompts must be a list of prompts, not a single string; wrap it: prompts=[text].")
    if isinstance(prompts, Tensor):
        if prompts.ndim != 2 or prompts.is_floating_point():
            raise DePassError(f"a tensor of prompts must be [n_prompts, pos] token ids; got {prompts.dtype} {tuple(prompts.shape)}.")
        return [row.tolist() for row in prompts], False
    items = list(prompts)
    if not items:
        raise DePassError("prompts is empty; give at least one prompt.")
    if all(isinstance(p, str) for p in items):
        return items, True  # type: ignore[return-value]
    out: list[list[int]] = []
    for i, p in enumerate(items):
        ids = p.tolist() if isinstance(p, Tensor) else p
        if isinstance(ids, str) or not isinstance(ids, Sequence) or not ids or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in ids
        ):
            raise DePassError(
                f"prompt {i} is {type(p).__name__}: prompts must all be strings, or all be non-empty lists (or 1-D "
                "tensors) of token ids."
            )
        out.append(list(ids))
    return out, False


def _per_prompt(value: Any, n: int, what: str) -> list[Any]:
    """One value per prompt: a single token (str or int) for all, or a sequence of ``n``."""
    if value is None or isinstance(value, (str, int)):
        return [value] * n
    if isinstance(value, Tensor):
        value = value.flatten().tolist()
    items = list(value)
    if len(items) == 1:
        return items * n
    if len(items) != n:
        raise DePassError(f"{what} must be one token or one per prompt ({n}); got {len(items)}.")
    return items


def _key(prompt: str | list[int], target: Any, contrast: Any) -> str:
    """A row's identity: its prompt and what is attributed (the target and contrast as given)."""
    text = "s:" + prompt if isinstance(prompt, str) else "t:" + ",".join(map(str, prompt))
    text += f"|target:{target!r}|contrast:{contrast!r}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


_FINGERPRINT_CHUNK = 1 << 22  # elements per step: 32 MB of float64 temporaries at most


def _fingerprint(tensors: Sequence[Tensor]) -> str:
    """A hash of tensors' values: each one's float64 sum and sum of absolute values (one host sync per
    device); two sets of weights that differ almost surely differ here, at the cost of one read of each."""
    if not tensors:
        return ""
    per_device: dict[Any, list[Tensor]] = {}
    for t in tensors:
        t = t.detach()
        if t.is_meta:  # offloaded (an HF device_map): no values here, its shape and dtype count below
            continue
        flat, sums = t.reshape(-1), []
        for a in range(0, flat.numel(), _FINGERPRINT_CHUNK):  # bounded temporaries (float64 copies of a chunk)
            part = flat[a : a + _FINGERPRINT_CHUNK].to(torch.float64)
            sums.append(torch.stack([part.sum(), part.abs().sum()]))
        stats = torch.stack(sums).sum(0) if sums else torch.zeros(2, dtype=torch.float64, device=t.device)
        per_device.setdefault(t.device, []).append(stats)
    values = [v for group in per_device.values() for v in torch.stack(group).flatten().tolist()]
    text = ",".join(f"{v:.12e}" for v in values) + "|" + ",".join(f"{tuple(t.shape)}{t.dtype}" for t in tensors)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _token_id(token: Any, to_id: Any, what: str, index: int) -> int:
    if isinstance(token, bool) or not isinstance(token, (int, str)):
        raise DePassError(f"{what} of prompt {index} must be a token string or an id; got {type(token).__name__}.")
    if isinstance(token, int):
        return token
    if to_id is None:
        raise DePassError(f"{what} {token!r} of prompt {index}: the model has no tokenizer; pass token ids.")
    return int(to_id(token))


def _settings(model: Any, spec: ComponentSpec, rule: Any, dtype: torch.dtype | None, contrast: bool,
              prepend_bos: bool | None, padding_side: str | None) -> dict[str, Any]:
    """What the rows' numbers depend on (a resumed run must match it): the model's shape and weights, the
    component spec with the values of its tensors (a subspace's basis), the rule, the dtype and the
    tokenisation options."""
    cfg = model.cfg
    shape = {k: getattr(cfg, k, None) for k in ("n_layers", "d_model", "n_heads", "d_mlp", "d_vocab", "n_ctx")}
    spec_tensors = [getattr(spec, f.name) for f in fields(spec) if isinstance(getattr(spec, f.name), Tensor)] \
        if is_dataclass(spec) else []
    return {
        "format": FORMAT,
        "model": {"class": type(model).__name__, **shape, "weights": _fingerprint(list(model.parameters()))},
        "components": repr(spec) + (f" tensors {_fingerprint(spec_tensors)}" if spec_tensors else ""),
        "mlp_rule": repr(rule), "dtype": None if dtype is None else str(dtype),
        "quantity": "logit difference" if contrast else "logit",
        "prepend_bos": prepend_bos, "padding_side": padding_side,
    }


# ------------------------------------------------------------------------------------ output folder
def _parts(out: Path) -> list[Path]:
    return sorted(p for p in out.iterdir() if _PART.match(p.name)) if out.is_dir() else []


def _done(out: Path) -> dict[int, str]:
    """``index -> key`` of every row already written in ``out``."""
    import pyarrow.parquet as pq

    done: dict[int, str] = {}
    for part in _parts(out):
        try:
            table = pq.read_table(part, columns=["index", "key"])
        except Exception as e:  # a file that is not ours, or damaged outside depass_tl
            raise DePassError(f"{part} is not a readable Parquet file ({type(e).__name__}: {e}); move it away.") from e
        done.update(zip(table.column("index").to_pylist(), table.column("key").to_pylist()))
    return done


def _prepare(out: Path, settings: dict[str, Any], keys: list[str], resume: bool) -> set[int]:
    """Rank 0: check or write the settings, drop temporary files, return the indices already done."""
    if out.exists() and not out.is_dir():
        raise DePassError(f"out={str(out)!r} is a file; run_dataset writes a folder (a Parquet dataset). Pick a new name.")
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".tmp-*"):
        tmp.unlink()
    meta = out / SETTINGS_FILE
    parts = _parts(out)
    if parts and not resume:
        raise DePassError(f"{out} already holds {len(parts)} result file(s) and resume=False; pick a new out folder.")
    if meta.exists() and parts:
        old = json.loads(meta.read_text())
        diff = sorted(k for k in settings if old.get(k) != settings[k])
        if diff:
            raise DePassError(
                f"{out} holds results of another run (different {', '.join(diff)}: "
                + "; ".join(f"{k} was {old.get(k)!r}, now {settings[k]!r}" for k in diff)
                + "). Use a new out folder, or the same settings to resume."
            )
    elif parts:
        raise DePassError(f"{out} holds result files but no {SETTINGS_FILE}; it was not written by run_dataset.")
    meta.write_text(json.dumps(settings, indent=1, default=str))
    done = _done(out)
    wrong = [i for i, k in done.items() if i >= len(keys) or keys[i] != k]
    if wrong:
        raise DePassError(
            f"{out} holds rows for other prompts (e.g. index {wrong[0]}: not the prompt, target and contrast given at "
            "that position); resume with the same prompts and targets (new prompts may be appended), or use a new "
            "out folder."
        )
    return set(done)


def _write(out: Path, rows: list[dict[str, Any]], rank: int) -> None:
    """Write ``rows`` as one file: under a temporary name first, renamed once complete."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    first = min(r["index"] for r in rows)
    tmp = out / f".tmp-{first:09d}-r{rank}.parquet"
    pq.write_table(pa.Table.from_pylist(rows, schema=_schema()), tmp)
    os.replace(tmp, out / f"part-{first:09d}-r{rank}.parquet")


# ------------------------------------------------------------------------------------ one batch
def _pad(prompts: list[list[int]], device: Any) -> tuple[Tensor, Tensor | None]:
    """Right-pad token-id prompts with 0 and mask the padding (no mask when all have one length)."""
    P = max(len(p) for p in prompts)
    tokens = torch.zeros((len(prompts), P), dtype=torch.long)
    mask = torch.zeros((len(prompts), P), dtype=torch.long)
    for b, p in enumerate(prompts):
        tokens[b, : len(p)] = torch.tensor(p)
        mask[b, : len(p)] = 1
    return tokens.to(device), None if bool(mask.all()) else mask.to(device)


def _rows(
    batch: list[int], prompts: Sequence[Any], is_text: bool, ids: list[str], keys: list[str], run: Any, dc: Any,
    targets: list[int], contrasts: list[int | None], per_position: bool,
) -> list[dict[str, Any]]:
    """One row per prompt of the batch (see the module docstring)."""
    B = len(batch)
    target = torch.tensor(targets)
    contrast = None if contrasts[0] is None else torch.tensor(contrasts)
    attrs = dc.logit_attrs(target, incorrect_tokens=contrast).detach().double().cpu()  # [component, batch]
    logits = dc.clean_last_logits.detach().double().cpu()
    rows_b = torch.arange(B)
    clean = logits[rows_b, target] - (0 if contrast is None else logits[rows_b, contrast])
    K = dc.group_size
    G = attrs.shape[0] // K
    gap = (attrs.reshape(G, K, B).sum(1) - clean[None]).abs().amax(0)  # [batch]
    final = dc["unembed.hook_in"].detach()
    hook_err = (final.reshape(G, K, *final.shape[1:]).sum(1) - dc.clean["unembed.hook_in"].to(final)).abs()
    hook_err = hook_err.amax(dim=(0, 2, 3)).double().cpu()  # [batch]
    mask = None if run.attention_mask is None else run.attention_mask.bool().cpu()
    rows = []
    for b, i in enumerate(batch):
        real = list(range(run.n_pos)) if mask is None else mask[b].nonzero().flatten().tolist()
        new_pos = {p: k for k, p in enumerate(real)}
        labels, values = [], []
        for c, label in enumerate(dc.labels):
            m = _TOKEN_LABEL.match(label) if per_position else None
            if m is not None:
                p = int(m.group(1))
                if p not in new_pos:
                    continue  # a padded position: exactly zero everywhere (see depass_tl.replay.engine)
                label = f"tok{new_pos[p]}"
            labels.append(label)
            values.append(float(attrs[c, b]))
        strs = None if run.str_tokens is None else [run.str_tokens[b][p] for p in real]
        rows.append({
            "index": i, "id": ids[i], "key": keys[i], "prompt": prompts[i] if is_text else None,
            "tokens": run.tokens[b, real].tolist(), "str_tokens": strs, "target": targets[b],
            "contrast": contrasts[b], "clean": float(clean[b]), "labels": labels, "attributions": values,
            "completeness_error": float(gap[b]), "hook_completeness_error": float(hook_err[b]),
        })
    return rows


# ------------------------------------------------------------------------------------ the runner
@checked(hints={
    "prompts": "prompts must be a list of strings, a list of token-id lists or 1-D tensors, or a [n_prompts, pos] tensor",
    "target": "target must be a token (a string or an id) or one per prompt",
    "contrast": "contrast must be a token (a string or an id), one per prompt, or None",
    "components": COMPONENTS_HINT,
})
def run_dataset(
    model: Model,
    prompts: Sequence[str] | Sequence[Sequence[int]] | Sequence[Tensor] | Tensor,
    *,
    target: Token | Sequence[Token] | Tensor,
    contrast: Token | Sequence[Token] | Tensor | None = None,
    components: ComponentSpec | None = None,
    mlp_rule: RuleLike = "softmax",
    temperature: float = DEFAULT_TEMPERATURE,
    batch_size: int = 8,
    out: str | os.PathLike = "attrs.parquet",
    ids: Sequence[Any] | None = None,
    prepend_bos: bool | None = None,
    padding_side: str | None = None,
    dtype: torch.dtype | None = None,
    chunk_size: int | None = None,
    max_memory: int | float | str | None = None,
    rows_per_file: int = 256,
    resume: bool = True,
    progress: bool = True,
    distributed: bool | None = None,
    process_group: Any = None,
) -> DatasetRun:
    """Attribute a logit (difference) at each prompt's last token to components, over many prompts.

    Prompts are captured and replayed ``batch_size`` at a time (prompts of different lengths are
    padded; padding carries no attribution) and the rows are streamed to the Parquet dataset ``out``
    (see the module docstring for the layout and the columns).

    Args:
        model: a ``HookedTransformer`` or ``TransformerBridge`` (a tokenizer for string prompts).
        prompts: strings, or token-id lists / 1-D tensors (or one ``[n_prompts, pos]`` tensor).
        target: the answer token (a string of one token or an id), one for all prompts or one per prompt.
        contrast: if given, attribute ``logit[target] − logit[contrast]`` (one, or one per prompt).
        components: the component spec (default :func:`depass_tl.tokens`).
        mlp_rule, temperature, dtype, chunk_size, max_memory: as in :func:`depass_tl.run_with_depass`.
        batch_size: prompts captured and replayed together.
        out: the output folder (created; ``.parquet`` in the name is a convention, not required).
        ids: one identifier per prompt, stored as the ``id`` column (default: the prompt's index).
        prepend_bos, padding_side: for string prompts, as in :func:`depass_tl.capture`.
        rows_per_file: prompts per Parquet file (what an interruption can lose).
        resume: skip the prompts already in ``out`` (False: refuse a non-empty ``out``).
        progress: show a progress bar (on rank 0).
        distributed: split the prompts over the ranks of ``torch.distributed`` (None: when it is
            initialised; False: this process does every prompt).
        process_group: the process group (default: the default group).

    Returns:
        A :class:`DatasetRun` (rows written and skipped by this process, time taken).

    Raises:
        DePassError: bad prompts or targets, an ``out`` that holds another run's results, or any
            error of ``capture`` / ``replay`` (it names the prompt indices of the batch).

    Examples:
        >>> import tempfile, depass_tl
        >>> from depass_tl import toy
        >>> model, _ = toy.load("ioi")
        >>> prompts = ["When Mary and John went to the store, John gave a drink to",
        ...            "When John and Mary went to the park, Mary gave a drink to"]
        >>> out = tempfile.mkdtemp() + "/attrs.parquet"
        >>> done = depass_tl.run_dataset(model, prompts, target=[" Mary", " John"], contrast=[" John", " Mary"],
        ...                              out=out, progress=False)
        >>> done.written, done.skipped
        (2, 0)
        >>> df = depass_tl.read_results(out)
        >>> list(df["id"]), bool((df["completeness_error"] < 1e-4).all())
        (['0', '1'], True)
        >>> depass_tl.run_dataset(model, prompts, target=[" Mary", " John"], contrast=[" John", " Mary"],
        ...                       out=out, progress=False).skipped
        2
    """
    from tqdm.auto import tqdm

    start_time = time.perf_counter()
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise DePassError(f"batch_size must be a positive integer; got {batch_size!r}.")
    if isinstance(rows_per_file, bool) or not isinstance(rows_per_file, int) or rows_per_file < 1:
        raise DePassError(f"rows_per_file must be a positive integer; got {rows_per_file!r}.")
    where = ranks(distributed, process_group, what="run_dataset")
    items, is_text = _prompt_list(prompts)
    n = len(items)
    targets_in = _per_prompt(target, n, "target")
    contrasts_in = _per_prompt(contrast, n, "contrast")
    if targets_in[0] is None:
        raise DePassError("target is required: the answer token whose logit is attributed.")
    if ids is not None and len(ids) != n:
        raise DePassError(f"ids must give one identifier per prompt ({n}); got {len(ids)}.")
    id_strs = [str(i) for i in (ids if ids is not None else range(n))]
    spec = TokenSpec() if components is None else components
    rule = get_rule(mlp_rule, temperature=temperature)
    to_id = single_token_fn(model)
    keys = [_key(p, t, c) for p, t, c in zip(items, targets_in, contrasts_in)]
    out_dir = Path(out)
    settings = _settings(model, spec, rule, dtype, contrast is not None, prepend_bos, padding_side)
    done = _shared_done(where, out_dir, settings, keys, resume)
    todo = [i for i in range(n) if i not in done]
    batches = [todo[a : a + batch_size] for a in range(0, len(todo), batch_size)][where.rank :: where.size]
    extra = spec.required_hooks(int(model.cfg.n_layers))
    per_position = isinstance(spec, TokenSpec)
    written = 0
    buffer: list[dict[str, Any]] = []
    bar = tqdm(total=sum(map(len, batches)), unit="prompt", desc="run_dataset" + (
        f" (rank 0 of {where.size})" if where.size > 1 else ""), disable=not progress or not where.is_main)
    try:
        for batch in batches:
            targets = [_token_id(targets_in[i], to_id, "target", i) for i in batch]
            contrasts = [None if contrasts_in[i] is None else _token_id(contrasts_in[i], to_id, "contrast", i)
                         for i in batch]
            try:
                with torch.no_grad():
                    if is_text:
                        run = capture(model, [items[i] for i in batch], prepend_bos=prepend_bos,
                                      padding_side=padding_side, extra_hooks=extra)  # type: ignore[arg-type]
                    else:
                        tokens, mask = _pad([items[i] for i in batch], model.cfg.device)  # type: ignore[misc]
                        run = capture(model, tokens, attention_mask=mask, extra_hooks=extra)
                    dc = replay(run, spec, mlp_rule=rule, names_filter=[], dtype=dtype,
                                chunk_size=chunk_size, max_memory=max_memory)
                    rows = _rows(batch, items, is_text, id_strs, keys, run, dc, targets, contrasts, per_position)
            except DePassError as e:
                raise type(e)(f"prompts {batch[0]}..{batch[-1]}: {e}") from e
            del run, dc
            buffer += rows
            bar.update(len(batch))
            if len(buffer) >= rows_per_file:
                _write(out_dir, buffer, where.rank)
                written += len(buffer)
                buffer = []
        if buffer:
            _write(out_dir, buffer, where.rank)
            written += len(buffer)
    finally:
        bar.close()
    if where.group is not None:
        import torch.distributed as dist

        dist.barrier(group=where.group)  # every rank's files are in place when any rank returns
    return DatasetRun(out_dir, n, written, len(done), time.perf_counter() - start_time, where.rank, where.size)


def _shared_done(where: Ranks, out: Path, settings: dict[str, Any], keys: list[str], resume: bool) -> set[int]:
    """The indices already done, as rank 0 reads them (broadcast, so every rank splits the same list)."""
    if where.group is None:
        return _prepare(out, settings, keys, resume)
    import torch.distributed as dist

    box: list[Any] = [None]
    if where.is_main:
        try:
            box[0] = _prepare(out, settings, keys, resume)
        except DePassError as e:
            box[0] = e
    dist.broadcast_object_list(box, src=dist.get_global_rank(where.group, 0), group=where.group)
    if isinstance(box[0], DePassError):
        raise box[0]
    return box[0]


def read_results(out: str | os.PathLike, *, long: bool = False, columns: Sequence[str] | None = None) -> Any:
    """The rows of a :func:`run_dataset` output folder as a ``pandas.DataFrame``, sorted by ``index``.

    Args:
        out: the folder ``run_dataset`` wrote.
        long: one row per (prompt, component) with columns ``index``, ``id``, ``target``, ``contrast``,
            ``clean``, ``label`` and ``attribution`` instead of one row per prompt.
        columns: read only these columns (and ``index``); not with ``long``.

    Returns:
        A DataFrame; ``df.attrs["settings"]`` holds the run's settings.

    Raises:
        DePassError: ``out`` holds no results.
    """
    import pandas as pd
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(out)
    parts = _parts(folder)
    if not parts:
        raise DePassError(f"{folder} holds no run_dataset results (no part-*.parquet files).")
    schema = _schema()
    if columns is not None:
        if long:
            raise DePassError("read_results: columns= and long=True do not go together; read long=True whole.")
        unknown = sorted(set(columns) - set(schema.names))
        if unknown:
            raise DePassError(f"read_results: unknown column(s) {unknown}; the columns are {schema.names}.")
        columns = ["index"] + [c for c in columns if c != "index"]
    table = pa.concat_tables([pq.read_table(p, schema=schema, columns=columns) for p in parts])
    df = table.to_pandas().sort_values("index", kind="stable").drop_duplicates("index").reset_index(drop=True)
    if long:
        df = df[["index", "id", "target", "contrast", "clean", "labels", "attributions"]].explode(
            ["labels", "attributions"], ignore_index=True
        ).rename(columns={"labels": "label", "attributions": "attribution"})
        df["attribution"] = df["attribution"].astype(float)
    meta = folder / SETTINGS_FILE
    df.attrs["settings"] = json.loads(meta.read_text()) if meta.exists() else {}
    return df
