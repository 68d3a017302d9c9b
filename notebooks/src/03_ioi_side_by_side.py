# %% [markdown]
# # 03 · IOI side by side: DePass vs activation patching, and why they differ
#
# **What you will learn**
#
# * how to put DePass and TransformerLens activation patching on the same axes with
#   `depass_tl.compare.compare`, for residual positions, module outputs and heads;
# * how to read the agreement table (rank correlation, top-k overlap);
# * where the two methods disagree on IOI, and why: DePass freezes attention patterns (and MLP
#   activations), so it cannot credit an input that matters by changing *where* a head looks (a QK
#   effect) or how strongly a neuron fires.
#
# Model: the `ioi` toy (3 layers, 4 heads each, MLPs).

# %%
import warnings

import torch

torch.set_num_threads(1)  # small models: one thread is fastest and keeps CI machines calm
torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import depass_tl
from depass_tl import viz
torch.set_grad_enabled(False)  # inference only in this notebook
import pandas as pd
from depass_tl import toy
from depass_tl.compare import compare
from depass_tl.toy.data import ioi_prompts

model, enc = toy.load("ioi")

# %% [markdown]
# ## Clean and corrupted prompts
#
# Clean: *"When A and B went to the P, S gave a O to"* with S the repeated name; the answer is the
# other name, the indirect object IO. Corrupted: the same sentence with the second S replaced by IO,
# which turns the answer around. The two prompts differ at **one position** (the second name, "S2").
# Metric: `logit(IO) − logit(S)` at the last position, averaged over 8 prompts of one template.

# %%
template = "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to"
prompts = [p for p in ioi_prompts(300, split="train", seed=0) if p.template == template][:8]
clean_texts = [p.text for p in prompts]
corrupt_texts = [p.text[: p.text.rindex(p.s + " gave")] + p.io + p.text[p.text.rindex(p.s + " gave") + len(p.s):]
                 for p in prompts]
clean, corrupted = enc.encode(clean_texts), enc.encode(corrupt_texts)
io = torch.tensor([enc.token_id(p.io) for p in prompts])
s = torch.tensor([enc.token_id(p.s) for p in prompts])
str_tokens = enc.to_str_tokens(clean[0])
s2_pos = int((clean[0] != corrupted[0]).nonzero()[0, 0])
assert bool(((clean != corrupted).sum(1) == 1).all()) and bool((clean != corrupted)[:, s2_pos].all())
print(clean_texts[0], "->", prompts[0].io)
print(corrupt_texts[0])
print("the prompts differ only at position", s2_pos, repr(str_tokens[s2_pos]))

# %% [markdown]
# ## Compare
#
# For every cell of TransformerLens's patching functions (`get_act_patch_resid_pre`, `…_attn_out`,
# `…_mlp_out`, `…_attn_head_out_by_pos`, `…_attn_head_out_all_pos`), `compare` reports
#
# * `patching`: metric(corrupted run with that cell patched in from the clean run) − metric(corrupted);
# * `depass_clean`, `depass_corrupted`: the DePass share of that cell (the activation the patch would
#   overwrite, replayed to the logits with frozen coefficients) on each run, and `depass_diff`, their
#   difference.
#
# If no attention pattern, norm scale or MLP activation downstream of a cell changes between the runs,
# `depass_diff` equals the patching effect exactly. Otherwise they differ, so we compare rankings.

# %%
cmp = compare(model, clean, corrupted, answer_tokens=io, incorrect_tokens=s, progress=False)
print(f"metric: clean {cmp.metric_clean:.2f}, corrupted {cmp.metric_corrupted:.2f}")
assert cmp.metric_clean > 0 > cmp.metric_corrupted
agreement = cmp.agreement(k=5)
agreement.round(3)

# %% [markdown]
# Read the table row by row: `spearman_diff` is the rank correlation of `depass_diff` with patching
# over all cells of a layout (1 = same order), `top_k_overlap_diff` the share of the 5 largest cells
# they have in common, `max_abs_diff` the largest gap in value.
#
# ## Heads: where they agree

# %%
heads = cmp["attn_head_out_all_pos"]
def top_head(values):
    l, h = divmod(int(values.abs().argmax()), values.shape[1])
    return f"L{l}H{h}"
print("top head by patching:  ", top_head(heads.patching), f"({float(heads.patching.abs().max()):.2f})")
print("top head by DePass diff:", top_head(heads.depass_diff), f"({float(heads.depass_diff.abs().max()):.2f})")
assert top_head(heads.patching) == top_head(heads.depass_diff)
assert top_head(heads.patching).startswith(f"L{model.cfg.n_layers - 1}")  # a last-layer head
viz.side_by_side(cmp, "attn_head_out_all_pos")

# %% [markdown]
# Both methods put the same head first: a last-layer head that moves the answer to the final
# position. The agreement table shows how well the rest of the ranking matches.
#
# ## Residual positions: where they differ

# %%
resid = cmp["resid_pre"]
layer0_patch, layer0_depass = resid.patching[0], resid.depass_diff[0]
share_patch = float(layer0_patch[s2_pos].abs() / layer0_patch.abs().sum())
share_depass = float(layer0_depass[s2_pos].abs() / layer0_depass.abs().sum())
print(f"layer-0 residual stream, share of |effect| at S2 (position {s2_pos}):")
print(f"  activation patching: {share_patch:.2f}")
print(f"  DePass difference:   {share_depass:.2f}")
top_depass = layer0_depass.abs().topk(4).indices.tolist()
print("  DePass's largest positions:", [(p, str_tokens[p]) for p in top_depass])
assert share_patch > 0.99 and share_depass < 0.9 * share_patch
viz.side_by_side(cmp, "resid_pre")

# %% [markdown]
# In layer 0 the clean and corrupted residual streams differ only at S2, so patching can only have an
# effect there, and it carries the whole metric. DePass gives S2 only part of the difference; the
# rest lands on positions whose tokens are **identical** in the two prompts.
#
# An identical token can only get a different DePass share if the coefficients it is replayed through
# differ between the two runs: attention patterns, norm scales, MLP activations. S2 changes those
# coefficients downstream, and DePass, which freezes each run's coefficients, cannot credit that change
# to S2; it shows up on the tokens whose paths were changed. Let us measure how far S2 moves the
# coefficients.

# %%
_, cache_clean = model.run_with_cache(clean)
_, cache_corrupt = model.run_with_cache(corrupted)
rows = []
for layer in range(model.cfg.n_layers):
    # total-variation distance between the clean and corrupted attention rows, queries at/after S2
    tv = (cache_clean["pattern", layer] - cache_corrupt["pattern", layer]).abs().sum(-1)[..., s2_pos:] / 2
    post_c, post_x = cache_clean["post", layer][:, -1], cache_corrupt["post", layer][:, -1]
    rows.append({"layer": layer,
                 "max attention change (TV)": float(tv.max()),
                 "mean attention change (TV)": float(tv.mean()),
                 "MLP activation change at END (relative)": float(((post_c - post_x).norm(dim=-1) / post_c.norm(dim=-1)).mean())})
coefficient_changes = pd.DataFrame(rows).set_index("layer")
print(coefficient_changes.round(3).to_string())
assert float(coefficient_changes["max attention change (TV)"].max()) > 0.1

# %% [markdown]
# Both kinds of coefficients move: the table gives, per layer, how much the attention rows at and after
# S2 change (total-variation distance, 0 = same pattern, 1 = disjoint) and how much the MLP activations
# at the final position change. The attention part is a **QK effect**: the S2 token changes *where*
# heads look, and with frozen patterns DePass cannot see that, as the DePass paper states. The MLP
# part is the analogous limitation for frozen activations.
#
# What about the top head itself? Where does it look from the final position?

# %%
name_head = top_head(heads.patching)
l, h = int(name_head[1]), int(name_head[3])
for name, c in (("clean", cache_clean), ("corrupted", cache_corrupt)):
    to_s2 = float(c["pattern", l][:, h, -1, s2_pos].mean())
    print(f"{name:>9}: {name_head} puts {to_s2:.2f} of its attention from the last token on the S2 position")
    assert to_s2 > 0.5

# %% [markdown]
# The top head reads the S2 position in both runs: its own pattern hardly depends on the corruption.
# It moves to the final position whatever the earlier layers wrote at S2, and *that* is decided by heads
# and MLPs whose coefficients depend on the S2 token. (This toy model solves IOI differently from
# GPT-2, whose name movers look at the IO token itself; notebook 06 runs the same analysis there.)
#
# * **Patching** re-runs the model, so patching S2 also restores every coefficient S2 controls, and
#   S2 gets all the credit: it answers *which inputs is the output sensitive to?*
# * **DePass** keeps each run's coefficients and follows the *content*: it answers *where does the
#   answer's vector come from in this run?* The difference between two runs then mixes S2's own content
#   with the coefficient changes S2 caused.
#
# Neither answer is wrong; they answer different questions, and where they disagree, some attention
# pattern or activation depends on the input.
#
# ## Exercises
#
# 1. Use `mlp_rule="ratio"` in `compare` and compare the agreement tables.
# 2. Print `cmp.to_dataframe()` and find the cells with the largest `|depass_diff − patching|`.
# 3. Try the "ABC" corruption: replace S2 by a third name, which neither repeats a name nor names the
#    other one. Does the top head's pattern change now? Which layouts agree better?
#
# **Next:** 04 (subspace patching and the interpretability illusion).
