# %% [markdown]
# # 03 · The IOI circuit, found with DePass and with patching
#
# **What you will learn**
#
# * how to find the textbook indirect-object-identification (IOI) circuit of Wang et al. (2022):
#   **name movers** that copy the indirect object to the last position, steered by an
#   **S-inhibition** head, with DePass (`components=depass_tl.heads()`) and with TransformerLens
#   activation and path patching;
# * how to put both methods on the same axes with `depass_tl.compare.compare`, and how to read every
#   row of the agreement table;
# * why they disagree where they do: DePass freezes attention patterns, so a head that works by
#   changing *where another head looks* (through its query) gets little DePass credit; DePass finds
#   it one level down, by decomposing the attention scores.
#
# Model: the `ioi` toy, a 2-layer attention-only transformer (4 heads per layer) trained on IOI
# sentences of several kinds (see `depass_tl.toy.ioi_data`).

# %%
import os

os.environ["TQDM_DISABLE"] = "1"  # TransformerLens's patching draws a progress bar per call; not here
import random
import warnings
from functools import partial

import torch

torch.set_num_threads(1)  # small models: one thread is fastest and keeps CI machines calm
torch.set_grad_enabled(False)  # inference only in this notebook
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import pandas as pd
from transformer_lens import patching

import depass_tl
from depass_tl import toy, viz
from depass_tl.compare import compare
from depass_tl.toy.data import IOI_NAMES, IOI_OBJECTS, IOI_PLACES, ioi_name_pair_split

model, enc = toy.load("ioi")
n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads

# %% [markdown]
# ## Clean and corrupted prompts
#
# Clean: *"When A and B went to the P, S gave a O to"*, where S (the subject) is A or B and the answer
# is the other name, the indirect object IO. Half the prompts have the order IO, S, S ("ABBA"), half
# S, IO, S ("BABA"). The name pairs are held out: no training sentence had these two names together.
#
# Corrupted ("ABC"): the same sentence with the second S replaced by a third name C. Now nothing says
# which of A and B is the subject, so the model cannot prefer IO over S. The prompts differ at one
# position, S2. Metric: `logit(IO) − logit(S)` at the last position (END), averaged over 8 prompts.

# %%
FRAME = "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to"
rng = random.Random(0)
_, heldout_pairs = ioi_name_pair_split()
clean_texts, corrupt_texts, io_ids, s_ids = [], [], [], []
for i in range(8):
    a, b = rng.choice(heldout_pairs)
    s_name, io_name = (a, b) if i % 2 == 0 else (b, a)      # alternate BABA and ABBA
    c = rng.choice([n for n in IOI_NAMES if n not in (a, b)])
    fill = dict(A=a, B=b, PLACE=rng.choice(IOI_PLACES), OBJECT=rng.choice(IOI_OBJECTS))
    clean_texts.append(FRAME.format(S=s_name, **fill))
    corrupt_texts.append(FRAME.format(S=c, **fill))
    io_ids.append(enc.token_id(" " + io_name))
    s_ids.append(enc.token_id(" " + s_name))
clean, corrupted = enc.encode(clean_texts), enc.encode(corrupt_texts)
io, s = torch.tensor(io_ids), torch.tensor(s_ids)
rows = torch.arange(len(io))
str_tokens = enc.to_str_tokens(clean[0])

# positions of IO, S1, S2 in each prompt (BOS is position 0); END is the last position
pos_io = (clean == io[:, None]).float().argmax(1)
s_hits = [(row == sid).nonzero()[:, 0] for row, sid in zip(clean, s)]
pos_s1, pos_s2 = torch.stack([h[0] for h in s_hits]), torch.stack([h[1] for h in s_hits])
s2 = int(pos_s2[0])
assert bool((pos_s2 == s2).all()) and bool(((clean != corrupted).sum(1) == 1).all())


def logit_diff(logits: torch.Tensor) -> torch.Tensor:
    return logits[rows, -1, io] - logits[rows, -1, s]


clean_ld, corrupt_ld = logit_diff(model(clean)), logit_diff(model(corrupted))
print(clean_texts[0], "->", enc.to_str_tokens(io[:1]))
print(corrupt_texts[0])
print(f"logit(IO) − logit(S): clean {float(clean_ld.mean()):.2f}, corrupted {float(corrupt_ld.mean()):.2f}")
assert bool((clean_ld > 0).all()) and float(clean_ld.mean()) > 4
assert abs(float(corrupt_ld.mean())) < 0.3 * float(clean_ld.mean())

# %% [markdown]
# ## 1 · DePass: which heads write the answer?
#
# `components=depass_tl.heads()` makes one component per head of every layer (`L{l}H{h}`), plus
# `L{l}.rest` (the residual stream before that layer) and `L{l}.bias`. Each layer is its own exact
# partition of the logit difference. A head's share is its output carried to the logits with every
# attention pattern and LayerNorm scale frozen at the clean run's values: "how much of the answer's
# vector passed through this head".

# %%
_, dc = depass_tl.run_with_depass(model, clean, components=depass_tl.heads())
attrs = dc.logit_attrs(io, incorrect_tokens=s)                     # [component, batch]
for layer in range(n_layers):
    group = [c for c, label in enumerate(dc.labels) if label.startswith(f"L{layer}")]
    err = float((attrs[group].sum(0) - clean_ld).abs().max())
    print(f"layer {layer}: heads + rest + bias = logit difference, max error {err:.1e}")
    assert err < 1e-3
mean_attrs = attrs.mean(1)
share = pd.Series({label: float(mean_attrs[dc.component(label)]) for label in dc.labels if "H" in label})
print((share / float(clean_ld.mean())).round(2).to_string())
layer1_share = float(share[[f"L1H{h}" for h in range(n_heads)]].sum() / clean_ld.mean())
print(f"layer-1 heads together: {layer1_share:.0%} of the logit difference")
assert layer1_share > 0.9
viz.head_grid(dc, attrs=mean_attrs[:, None].expand(-1, len(io)), target="mean logit(IO) − logit(S)")

# %% [markdown]
# In layer 1 (the last layer) the four heads carry the whole logit difference between them (a little
# more: `L1.rest`, the direct effect of everything before layer 1, is slightly negative). In layer 0
# the shares are spread: every layer-0 head writes something that the layer-1 heads later move to END
# through their frozen patterns.
#
# ## 2 · Attention patterns: what do these heads look at?
#
# From TransformerLens's own `run_with_cache`: for each head, the attention from END to IO, to S1 and
# to S2, and from S2 to S1 (a **duplicate-token head** looks from the second copy of a name at the
# first).

# %%
_, cache = model.run_with_cache(clean)
table = []
for layer in range(n_layers):
    pattern = cache["pattern", layer]                                # [batch, head, query, key]
    for h in range(n_heads):
        table.append({"head": f"L{layer}H{h}",
                      "END→IO": float(pattern[rows, h, -1, pos_io].mean()),
                      "END→S1": float(pattern[rows, h, -1, pos_s1].mean()),
                      "END→S2": float(pattern[rows, h, -1, pos_s2].mean()),
                      "S2→S1": float(pattern[rows, h, pos_s2, pos_s1].mean()),
                      "DePass share": share[f"L{layer}H{h}"]})
heads_table = pd.DataFrame(table).set_index("head")
name_movers = list(heads_table.index[(heads_table["END→IO"] > 0.3)
                                     & (heads_table["END→IO"] > 1.5 * (heads_table["END→S1"] + heads_table["END→S2"]))])
s_inhibition = list(heads_table.index[heads_table["END→S2"] > 0.5])
print("name movers (END looks at IO):", name_movers)
print("S-inhibition (END looks at S2):", s_inhibition)
assert name_movers == ["L1H0", "L1H1", "L1H2"] and s_inhibition == ["L0H3"]
assert abs(heads_table.loc["L1H3", "END→IO"] - heads_table.loc["L1H3", "END→S1"]) < 0.1  # L1H3: both names
assert float(heads_table["S2→S1"].max()) < 0.3                     # no duplicate-token head
heads_table.round(2)

# %% [markdown]
# * **Name movers:** three of the four layer-1 heads (`L1H0`–`L1H2`) look from END at the IO far more
#   than at either S, and DePass gave them the largest shares. They copy the name they look at: their
#   share is positive because IO gets in, and S, which they hardly look at, does not. The fourth,
#   `L1H3`, looks at both names about equally on these prompts and has the smallest share; the toy's
#   own record (`toy.info("ioi")["metrics"]["name_mover_heads"]`, measured on 200 held-out prompts of
#   every classic frame) counts it as a weaker fourth name mover.
# * **S-inhibition:** `L0H3` looks from END at S2. Being in layer 0 it sees only tokens and
#   positions, and S2 is the last name before END in this frame; it does not "know" that S2 is a
#   repeat.
# * **No duplicate-token heads:** no head looks from S2 back at S1 (the `S2→S1` column). In GPT-2,
#   duplicate-token and induction heads mark S2 as a repeated name; this two-layer toy does without.
#
# So the circuit is: `L0H3` reads S2 and writes it at END; the name movers' queries at END use that
# to look at the *other* name, IO, and copy it. That last step is a claim about queries; the next two
# sections test it with patching.
#
# ## 3 · Activation patching: which heads matter?
#
# `transformer_lens.patching.get_act_patch_attn_head_out_all_pos` runs the corrupted prompts with one
# head's output (at every position) restored from the clean run, and reports the metric, here as a
# fraction of the way from corrupted (0) to clean (1).

# %%
_, clean_cache = model.run_with_cache(clean)


def restored(logits: torch.Tensor) -> torch.Tensor:
    return (logit_diff(logits).mean() - corrupt_ld.mean()) / (clean_ld.mean() - corrupt_ld.mean())


effect = patching.get_act_patch_attn_head_out_all_pos(model, corrupted, clean_cache, restored)
effect_table = pd.DataFrame(effect.numpy(), index=[f"L{l}" for l in range(n_layers)],
                            columns=[f"H{h}" for h in range(n_heads)])
print(effect_table.round(2).to_string())
assert float(effect[0, 3]) > 0.8 and float(effect[0, 3]) == float(effect.max())
assert all(0.1 < float(effect[1, h]) < 0.4 for h in range(n_heads))

# %% [markdown]
# Restoring `L0H3` alone brings back almost all of the answer: it is the one head that sees the
# corrupted position and passes the difference on. Each name mover alone restores 10–35 %: its own
# copy of IO. Patching's top head is the S-inhibition head; DePass's are the name movers. To see how
# `L0H3` acts, patch **paths**: let only its corrupted output reach the name movers' queries (or keys,
# or values), with every other head frozen at its clean output.

# %%
_, corrupt_cache = model.run_with_cache(corrupted)


def sender_corrupted(z, hook, layer):
    z = clean_cache[f"blocks.{layer}.attn.hook_z"].clone()         # every layer-0 head as in the clean run
    z[:, :, 3] = corrupt_cache[f"blocks.{layer}.attn.hook_z"][:, :, 3]  # ... except L0H3, from the ABC run
    return z


def keep(act, hook, store):
    store["act"] = act.clone()


def put(act, hook, store):
    return store["act"]


path_effect = {}
for target in ("q", "k", "v"):
    store = {}
    model.run_with_hooks(clean, fwd_hooks=[("blocks.0.attn.hook_z", partial(sender_corrupted, layer=0)),
                                           (f"blocks.1.attn.hook_{target}", partial(keep, store=store))])
    logits = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.1.attn.hook_{target}", partial(put, store=store))])
    path_effect[target] = float(logit_diff(logits).mean())
print(f"clean {float(clean_ld.mean()):.2f};",
      ", ".join(f"L0H3 → name movers' {t}: {v:.2f}" for t, v in path_effect.items()))
assert path_effect["q"] < 0.4 * float(clean_ld.mean())
assert all(abs(path_effect[t] - float(clean_ld.mean())) < 0.05 * float(clean_ld.mean()) for t in "kv")

# %% [markdown]
# Through the queries alone, `L0H3`'s corrupted output destroys most of the logit difference; through
# the keys or the values it changes nothing. This is **Q-composition**: the S-inhibition head tells
# the name movers' queries which name *not* to look at.
#
# ## 4 · DePass finds the S-inhibition head one level down
#
# DePass's logit shares freeze the name movers' patterns, so they cannot credit `L0H3` for steering
# them. But the name movers' attention *scores* are themselves linear in their input once the
# LayerNorm scale is frozen: `depass_tl.attention_score_attrs(..., side="query")` splits each
# query over the layer-0 components (the key kept whole). We split the score END→IO minus the score
# END→S1, the preference for IO over S.

# %%
_, dc0 = depass_tl.run_with_depass(model, clean, components=depass_tl.heads(0))
to_io = depass_tl.attention_score_attrs(model, dc0, cache, layer=1, key_pos=pos_io, side="query")
to_s1 = depass_tl.attention_score_attrs(model, dc0, cache, layer=1, key_pos=pos_s1, side="query")
print("completeness error:", to_io.completeness_error(), to_s1.completeness_error())
preference = pd.DataFrame((to_io.values - to_s1.values).mean(1).numpy(), index=dc0.labels,
                          columns=[f"L1H{h}" for h in range(n_heads)])
print("largest contribution to each name mover's preference for IO:", preference.idxmax().to_dict())
assert set(preference.idxmax()) == {"L0H3"}
preference.round(2)

# %% [markdown]
# For every name mover, `L0H3` builds most of the query's preference for IO over S: the S-inhibition
# head, found by DePass from the clean run alone.
#
# ## 5 · The two methods side by side
#
# For every cell of TransformerLens's patching functions (`get_act_patch_resid_pre`,
# `…_attn_out`, `…_attn_head_out_by_pos`, `…_attn_head_out_all_pos`; `…_mlp_out` is not computed,
# the model has no MLPs), `compare` reports
#
# * `patching`: metric(corrupted run with that cell patched in from the clean run) − metric(corrupted);
# * `depass_clean`, `depass_corrupted`: the DePass share of that cell (the activation the patch would
#   overwrite, replayed to the logits with frozen coefficients) on each run, and `depass_diff`, their
#   difference.
#
# If no attention pattern or norm scale downstream of a cell changes between the runs, `depass_diff`
# equals the patching effect exactly. Here `L0H3` changes the name movers' patterns, so they differ.

# %%
cmp = compare(model, clean, corrupted, answer_tokens=io, incorrect_tokens=s, progress=False)
print(f"metric: clean {cmp.metric_clean:.2f}, corrupted {cmp.metric_corrupted:.2f}")
agreement = cmp.agreement(k=5)
assert list(agreement.index) == ["resid_pre", "attn_out", "attn_head_out_by_pos", "attn_head_out_all_pos"]
assert float(agreement["spearman_diff"].max()) < 0.8                # no layout agrees well overall
agreement.round(3)

# %% [markdown]
# `spearman_diff` is the rank correlation of `depass_diff` with patching over all cells of a layout
# (1 = same order), `top_k_overlap_diff` the share of the 5 largest cells they have in common,
# `max_abs_diff` the largest gap in value. No layout agrees well overall; row by row, here is why.
#
# ### Row `resid_pre`: positions

# %%
resid = cmp["resid_pre"]
for layer in range(n_layers):
    patch, diff = resid.patching[layer], resid.depass_diff[layer]
    print(f"resid_pre[{layer}]: patching puts {float(patch.abs().max() / patch.abs().sum()):.0%} of |effect| on "
          f"{str_tokens[int(patch.abs().argmax())]!r} (position {int(patch.abs().argmax())}); DePass's two largest: "
          f"{[(p, str_tokens[p]) for p in diff.abs().topk(2).indices.tolist()]}")
patch0, diff0 = resid.patching[0], resid.depass_diff[0]
assert int(patch0.abs().argmax()) == s2 and float(patch0[s2].abs() / patch0.abs().sum()) > 0.99
names_pos = [int(pos_io[0]), int(pos_s1[0])]
assert set(diff0.abs().topk(2).indices.tolist()) == set(names_pos)
assert float(diff0[names_pos].sum()) > 4 * float(diff0[s2].abs())
assert int(resid.patching[1].abs().argmax()) == clean.shape[1] - 1  # layer 1: END


def movers_look_at(c, where):  # mean attention of the three name movers from END
    return float(torch.stack([c["pattern", 1][rows, h, -1, where] for h in range(3)]).mean())


for run, c in (("clean", cache), ("ABC", corrupt_cache)):
    print(f"{run:>5} run: name movers look at IO {movers_look_at(c, pos_io):.2f}, at S1 {movers_look_at(c, pos_s1):.2f}")
assert movers_look_at(cache, pos_io) > 2 * movers_look_at(cache, pos_s1)
assert abs(movers_look_at(corrupt_cache, pos_io) - movers_look_at(corrupt_cache, pos_s1)) < 0.1
viz.side_by_side(cmp, "resid_pre")

# %% [markdown]
# * **Layer 0**: the two prompts differ only at S2, so patching can only have an effect there, and it
#   has all of it. DePass gives S2 little and puts most of the difference on the two names A and B,
#   tokens that are **identical** in the two prompts. An identical token gets a different share only
#   if the coefficients it is replayed through differ: in the clean run the name movers look at IO
#   and carry its token to END; in the ABC run they split their attention evenly between A and B (the
#   printout above). DePass
#   follows the *content* (the IO token's vector is what ends up in the logit), patching the *cause*
#   (the S2 token decides where the movers look).
# * **Layer 1**: patching finds the effect at END, where `L0H3` has written S2; DePass again mostly at
#   the names (their layer-0 mixtures, which the movers read).
#
# ### Row `attn_out`: layer outputs per position

# %%
attn = cmp["attn_out"]
end = clean.shape[1] - 1
p1, d1 = float(attn.patching[1, end]), float(attn.depass_diff[1, end])
print(f"layer 1 at END: patching {p1:.2f}, DePass difference {d1:.2f}")
print(f"layer 0 at END: patching {float(attn.patching[0, end]):.2f}, DePass difference {float(attn.depass_diff[0, end]):.2f}")
assert abs(d1 - p1) < 0.15 * p1                                     # the last layer: they agree
assert float(attn.patching[0, end]) > 3 * float(attn.depass_diff[0, end])
assert float(attn.patching[:, :end].abs().max()) < 0.1             # before END nothing differs...
assert float(attn.depass_diff[0, :end].abs().max()) > 1            # ...but DePass credits layer 0 there

# %% [markdown]
# * **Layer 1 at END** (the name movers' summed output): the two agree to within about 10 %. After
#   the last layer only the final LayerNorm's scale is frozen; it differs a little between the runs,
#   and patching mixes the clean output with the corrupted run's scale.
# * **Layer 0 at END** (mostly `L0H3`): patching gives it nearly everything, DePass a fraction: the
#   query effect, again.
# * **Layer 0 before END**: patching is exactly 0 (the outputs there are identical in both runs, S2
#   comes later or is the query's own token); DePass credits the outputs at the name positions, which
#   the movers' values read through different patterns in the two runs.
#
# ### Row `attn_head_out_by_pos`: heads per position

# %%
by_pos = cmp["attn_head_out_by_pos"]
movers_patch, movers_diff = by_pos.patching[1, end], by_pos.depass_diff[1, end]
print("name movers at END, patching:", movers_patch.round(decimals=2).tolist())
print("name movers at END, DePass:  ", movers_diff.round(decimals=2).tolist())
print(f"L0H3 at END: patching {float(by_pos.patching[0, end, 3]):.2f}, DePass {float(by_pos.depass_diff[0, end, 3]):.2f}")
assert bool(((movers_diff - movers_patch).abs() < 0.3 * movers_patch.abs()).all())
assert float(by_pos.patching[0, end, 3]) > 4 * float(by_pos.depass_diff[0, end, 3])

# %% [markdown]
# The finest layout shows both effects at once. For the **name movers at END** (the last layer, values
# copied straight to the logits) DePass and patching agree head by head within about 25 %. For
# **`L0H3` at END** patching is several times DePass: its output acts through the name movers'
# queries, which DePass freezes. The remaining cells are the layer-0 heads at the name positions:
# patching 0, DePass > 0, as in `attn_out`. With 120 cells, mostly exact zeros for patching, the rank
# correlation is low, although the largest cells agree in place.
#
# ### Row `attn_head_out_all_pos`: one number per head

# %%
heads_cmp = cmp["attn_head_out_all_pos"]
print(pd.DataFrame({"patching": heads_cmp.patching.flatten().numpy(),
                    "DePass difference": heads_cmp.depass_diff.flatten().numpy(),
                    "DePass clean": heads_cmp.depass_clean.flatten().numpy()},
                   index=[f"L{l}H{h}" for l in range(n_layers) for h in range(n_heads)]).round(2).to_string())
assert int(heads_cmp.patching.flatten().argmax()) == 3              # patching: L0H3 first
assert int(heads_cmp.depass_clean[1].argmax()) in (0, 1)            # DePass: a name mover leads layer 1
viz.side_by_side(cmp, "attn_head_out_all_pos")

# %% [markdown]
# Patching ranks `L0H3` first by far (it decides what the name movers do); DePass spreads the credit
# over the layer-0 heads whose outputs at the name positions the movers copy, and gives the name
# movers about what patching gives them. Each method puts first the heads it is built to see: patching
# the *cause* of the change, DePass the *path of the content*.
#
# ### Row `mlp_out`: not here
#
# This model has no MLPs. In a model with MLPs, frozen MLP activations are the second source of
# disagreement: an input that changes how strongly a neuron fires gets patching credit but no DePass
# credit (try notebook 06 on GPT-2).
#
# ## What we found
#
# * **The circuit.** Three name movers in layer 1 (and a weaker fourth) look from END at the indirect
#   object and copy it;
#   one S-inhibition head in layer 0 looks at S2 and, through the name movers' queries, steers them
#   away from the subject. There are no duplicate-token heads: in this frame the S-inhibition head can
#   find S2 by position alone.
# * **DePass** names the name movers directly (logit shares), and the S-inhibition head one level down
#   (attention-score attribution on the query side), from the clean run alone.
# * **Patching** names the S-inhibition head directly (it restores almost everything) and the name
#   movers as smaller contributors; path patching shows the S-inhibition head acts on queries only.
# * **Where they differ, an attention pattern depends on the input.** DePass answers *where does the
#   answer's vector come from in this run?*; patching answers *which inputs is the output sensitive to?*
#
# ## What to try next
#
# 1. Use the IO↔S swap corruption (replace S2 by IO) instead of ABC: the answer flips. Which rows of
#    the agreement table change?
# 2. Run the same analysis on prompts where the IO is named last
#    (`ioi_prompts(8, split="heldout", seed=0, kind="io_last")`): what does `L0H3` look at there, and
#    how do the name movers still find the IO?
# 3. Decompose the name movers' *keys* (`side="key"`) over the layer-0 heads: which heads make the IO
#    position look like a name worth copying?
# 4. Knock out the name movers at END (`hook_z` from the ABC run) with `model.run_with_hooks`: how much
#    of the logit difference is left, and who carries it?
#
# **Next:** 04 (subspace patching and the interpretability illusion).
