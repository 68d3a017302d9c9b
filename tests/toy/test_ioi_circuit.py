"""The ``ioi`` toy has the textbook IOI circuit, checked three ways.

The heads are the ones its ``toy.json`` documents (``name_mover_heads``, ``s_inhibition_heads``);
every number below is computed here from TransformerLens itself (``run_with_cache`` patterns,
``transformer_lens.patching``, forward hooks), not from ``depass_tl.toy.evaluate``, except the last
check, which is DePass's own claim. Prompts are held-out name pairs (never seen together in
training) in the canonical frame *"When A and B went to the P, S gave a O to"*, both orders.

1. **Attention patterns**: name movers look from the end (END) at the indirect object (IO), not at
   the subject (S); S-inhibition heads look from END at the second mention of S (S2).
2. **Patching**: the name movers carry the answer (replacing their output at END by its value on
   prompts with other names collapses the logit difference), and the S-inhibition heads act on the
   name movers' *queries* (path patching sender → receiver query; the same into keys or values does
   nothing).
3. **DePass**: with one component per head, the name movers carry most of the logit difference.
"""

from __future__ import annotations

import random
import warnings
from functools import partial

import pytest
import torch
from transformer_lens import patching

import depass_tl
from depass_tl import toy
from depass_tl.toy.data import IOI_NAMES, IOI_OBJECTS, IOI_PLACES, ioi_name_pair_split

warnings.filterwarnings("ignore", category=DeprecationWarning)

FRAME = "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to"
N = 40


def _head(label: str) -> tuple[int, int]:
    layer, _, head = label[1:].partition("H")
    return int(layer), int(head)


@pytest.fixture(scope="module")
def ioi():
    """Model, documented heads, clean and ABC-corrupted tokens, IO/S ids, and the positions of IO, S1, S2."""
    torch.set_num_threads(1)
    model, enc = toy.load("ioi")
    metrics = toy.info("ioi")["metrics"]
    movers = metrics["name_mover_heads"].split()
    inhibition = metrics["s_inhibition_heads"].split()
    rng = random.Random(0)
    _, heldout = ioi_name_pair_split()
    clean, corrupt, io, s = [], [], [], []
    for i in range(N):
        a, b = rng.choice(heldout)
        s_name = (a, b)[i % 2]  # alternate ABBA and BABA
        io_name = b if s_name == a else a
        c = rng.choice([n for n in IOI_NAMES if n not in (a, b)])  # ABC: S2 replaced by a third name
        fill = dict(A=a, B=b, PLACE=rng.choice(IOI_PLACES), OBJECT=rng.choice(IOI_OBJECTS))
        clean.append(FRAME.format(S=s_name, **fill))
        corrupt.append(FRAME.format(S=c, **fill))
        io.append(enc.token_id(" " + io_name))
        s.append(enc.token_id(" " + s_name))
    clean_t, corrupt_t = enc.encode(clean), enc.encode(corrupt)
    io_t, s_t = torch.tensor(io), torch.tensor(s)
    # positions from the tokens themselves: IO once, S twice (BOS is position 0)
    pos_io = (clean_t == io_t[:, None]).float().argmax(1)
    s_hits = [(row == sid).nonzero()[:, 0] for row, sid in zip(clean_t, s_t)]
    assert all(len(h) == 2 for h in s_hits)
    pos_s1, pos_s2 = torch.stack([h[0] for h in s_hits]), torch.stack([h[1] for h in s_hits])
    return dict(model=model, movers=movers, inhibition=inhibition, clean=clean_t, corrupt=corrupt_t,
                io=io_t, s=s_t, pos=dict(io=pos_io, s1=pos_s1, s2=pos_s2))


def _logit_diff(logits: torch.Tensor, io: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(len(io))
    return logits[rows, -1, io] - logits[rows, -1, s]


def test_the_toy_documents_its_circuit(ioi) -> None:
    assert 2 <= len(ioi["movers"]) <= 6 and 1 <= len(ioi["inhibition"]) <= 3
    assert not set(ioi["movers"]) & set(ioi["inhibition"])
    mover_layers = {_head(h)[0] for h in ioi["movers"]}
    assert max(_head(h)[0] for h in ioi["inhibition"]) < min(mover_layers)  # S-inhibition feeds the movers


@torch.no_grad()
def test_attention_patterns(ioi) -> None:
    """Name movers: END → IO (each more than to S1 and S2 together; as a group 3× more); S-inhibition: END → S2."""
    model, pos = ioi["model"], ioi["pos"]
    _, cache = model.run_with_cache(ioi["clean"], names_filter=lambda n: n.endswith("hook_pattern"))
    rows = torch.arange(N)

    def end_to(label: str, where: str) -> float:
        layer, head = _head(label)
        return float(cache[f"blocks.{layer}.attn.hook_pattern"][rows, head, -1, pos[where]].mean())

    to_io = {label: end_to(label, "io") for label in ioi["movers"]}
    to_s = {label: end_to(label, "s1") + end_to(label, "s2") for label in ioi["movers"]}
    for label in ioi["movers"]:
        assert to_io[label] > 0.3 and to_io[label] > 1.5 * to_s[label], (label, to_io[label], to_s[label])
    mean_io, mean_s = sum(to_io.values()) / len(to_io), sum(to_s.values()) / len(to_s)
    assert mean_io > 0.5 and mean_io > 3 * mean_s, (mean_io, mean_s)
    for label in ioi["inhibition"]:
        assert end_to(label, "s2") > 0.5, (label, end_to(label, "s2"))
    # no undocumented head looks at the IO from END as much
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            if f"L{layer}H{head}" not in ioi["movers"]:
                assert end_to(f"L{layer}H{head}", "io") < 0.3, f"L{layer}H{head}"


@torch.no_grad()
def test_no_duplicate_token_heads(ioi) -> None:
    """Documented limitation: no head looks from S2 back at S1 (S-inhibition finds S2 without them)."""
    model, pos = ioi["model"], ioi["pos"]
    _, cache = model.run_with_cache(ioi["clean"], names_filter=lambda n: n.endswith("hook_pattern"))
    rows = torch.arange(N)
    s2_to_s1 = torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][rows, :, pos["s2"], pos["s1"]].mean(0)
                            for layer in range(model.cfg.n_layers)])
    assert float(s2_to_s1.max()) < 0.3
    assert toy.info("ioi")["metrics"]["duplicate_token_heads"] == ""


@torch.no_grad()
def test_activation_patching_finds_the_name_movers(ioi) -> None:
    """TransformerLens's per-head patching (corrupted run, one head restored from the clean run)."""
    model = ioi["model"]
    io, s = ioi["io"], ioi["s"]
    _, clean_cache = model.run_with_cache(ioi["clean"])
    clean_ld = float(_logit_diff(model(ioi["clean"]), io, s).mean())
    corrupt_ld = float(_logit_diff(model(ioi["corrupt"]), io, s).mean())
    assert clean_ld > 4 and abs(corrupt_ld) < 0.25 * clean_ld  # ABC: nothing says which name to suppress

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return (_logit_diff(logits, io, s).mean() - corrupt_ld) / (clean_ld - corrupt_ld)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        effect = patching.get_act_patch_attn_head_out_all_pos(model, ioi["corrupt"], clean_cache, metric)
    top = {f"L{i // model.cfg.n_heads}H{i % model.cfg.n_heads}" for i in effect.flatten().topk(len(ioi["inhibition"]) + 2).indices.tolist()}
    assert set(ioi["inhibition"]) <= top  # restoring S-inhibition alone restores much of the answer
    for label in ioi["inhibition"]:
        assert float(effect[_head(label)]) > 0.3


@torch.no_grad()
def test_knocking_out_the_name_movers_breaks_the_task(ioi) -> None:
    """Their output at END from the ABC prompts (which name the other people): the answer is lost."""
    model, io, s = ioi["model"], ioi["io"], ioi["s"]
    _, corrupt_cache = model.run_with_cache(ioi["corrupt"], names_filter=lambda n: n.endswith("hook_z"))
    by_layer: dict[int, list[int]] = {}
    for label in ioi["movers"]:
        layer, head = _head(label)
        by_layer.setdefault(layer, []).append(head)

    def knock_out(z: torch.Tensor, hook, layer: int) -> torch.Tensor:
        # the layer and cache key are bound here, not read from hook.name: the Bridge reports its own names
        heads = by_layer[layer]
        z[:, -1, heads] = corrupt_cache[f"blocks.{layer}.attn.hook_z"][:, -1, heads]
        return z

    clean = _logit_diff(model(ioi["clean"]), io, s)
    hooks = [(f"blocks.{layer}.attn.hook_z", partial(knock_out, layer=layer)) for layer in by_layer]
    knocked = _logit_diff(model.run_with_hooks(ioi["clean"], fwd_hooks=hooks), io, s)
    assert float((clean > 0).float().mean()) == 1.0
    assert float(knocked.mean()) < 0.4 * float(clean.mean())


@torch.no_grad()
def test_s_inhibition_acts_through_the_name_movers_queries(ioi) -> None:
    """Path patching: S-inhibition heads' ABC output reaches only the name movers' q (or k, or v)."""
    model, io, s = ioi["model"], ioi["io"], ioi["s"]
    _, clean_cache = model.run_with_cache(ioi["clean"])
    _, corrupt_cache = model.run_with_cache(ioi["corrupt"])
    first_mover_layer = min(_head(h)[0] for h in ioi["movers"])
    senders = [_head(h) for h in ioi["inhibition"]]

    def senders_corrupt_rest_clean(z: torch.Tensor, hook, layer: int) -> torch.Tensor:
        key = f"blocks.{layer}.attn.hook_z"
        z = clean_cache[key].clone()  # every other head frozen at its clean value
        for l, h in senders:
            if l == layer:
                z[:, :, h] = corrupt_cache[key][:, :, h]
        return z

    freeze = [(f"blocks.{layer}.attn.hook_z", partial(senders_corrupt_rest_clean, layer=layer))
              for layer in range(first_mover_layer)]
    clean_ld = float(_logit_diff(model(ioi["clean"]), io, s).mean())
    result = {}
    for target in ("q", "k", "v"):
        received = {}

        def grab(act: torch.Tensor, hook, layer: int) -> None:
            received[layer] = act.clone()

        def put(act: torch.Tensor, hook, layer: int) -> torch.Tensor:
            for label in ioi["movers"]:
                l, h = _head(label)
                if l == layer:
                    act[:, :, h] = received[layer][:, :, h]
            return act

        layers = sorted({_head(h)[0] for h in ioi["movers"]})
        model.run_with_hooks(ioi["clean"], fwd_hooks=freeze + [
            (f"blocks.{layer}.attn.hook_{target}", partial(grab, layer=layer)) for layer in layers])
        logits = model.run_with_hooks(ioi["clean"], fwd_hooks=[
            (f"blocks.{layer}.attn.hook_{target}", partial(put, layer=layer)) for layer in layers])
        result[target] = float(_logit_diff(logits, io, s).mean())
    assert result["q"] < 0.6 * clean_ld, result
    assert abs(result["k"] - clean_ld) < 0.1 * clean_ld and abs(result["v"] - clean_ld) < 0.1 * clean_ld, result


@torch.no_grad()
def test_depass_credits_the_name_movers(ioi) -> None:
    """One DePass component per head of the movers' layer: the movers carry most of the logit difference."""
    model, io, s = ioi["model"], ioi["io"], ioi["s"]
    layer = _head(ioi["movers"][0])[0]
    assert all(_head(h)[0] == layer for h in ioi["movers"])
    logits, dcache = depass_tl.run_with_depass(model, ioi["clean"], components=depass_tl.heads(layer))
    attrs = dcache.logit_attrs(io, incorrect_tokens=s)  # [component, batch]
    clean_ld = _logit_diff(logits, io, s)
    assert torch.allclose(attrs.sum(0), clean_ld, atol=1e-3)  # complete
    mean = attrs.mean(1)
    movers = [dcache.labels.index(h) for h in ioi["movers"]]
    heads = [i for i, label in enumerate(dcache.labels) if label.startswith(f"L{layer}H")]
    assert float(mean[movers].sum()) > 0.5 * float(clean_ld.mean())
    ranked = sorted(heads, key=lambda i: -float(mean[i]))
    assert set(ranked[: len(movers)]) == set(movers)
