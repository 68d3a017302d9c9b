# %% [markdown]
# # 02 · The induction circuit: head-level DePass, checked by activation patching
#
# **What you will learn**
#
# * how to attribute a prediction to every attention head with `components=depass_tl.heads()`;
# * how to check the ranking with TransformerLens activation patching, through `depass_tl.compare`;
# * how to tell *what* a head does from its attention pattern (previous-token and induction scores);
# * why DePass gives the **previous-token head** almost no credit while patching can make it the most
#   important head, and how DePass still finds it one level down, in the induction head's *keys*.
#
# The toy model `toy.load("induction")` is a 2-layer attention-only transformer trained on random
# tokens in which earlier segments recur at random distances (`depass_tl.toy.data.copy_sequences`),
# so the only way to predict a repeat is by content. The textbook solution is an **induction
# circuit** (Elhage et al., 2021; Olsson et al., 2022): a *previous-token head* in layer 0 writes "the
# token before me was A" at every position, and an *induction head* in layer 1 uses that (in its
# keys: *K-composition*) to attend from the second A to the token right after the first A, and copies
# it. We look for those two kinds of head.

# %%
import warnings

import torch

torch.set_num_threads(1)  # small models: one thread is fastest and keeps CI machines calm
torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import depass_tl
from depass_tl import viz
torch.set_grad_enabled(False)  # inference only in this notebook
from depass_tl import toy
from depass_tl.compare import compare
from depass_tl.toy.data import repeated_sequences

model, enc = toy.load("induction")
n_vocab = model.cfg.d_vocab  # ids 1 .. n_vocab - 1 are words, 0 is BOS
print(toy.info("induction")["description"])

# %% [markdown]
# ## Data: a clean batch and two corruptions
#
# Each clean prompt is `BOS, A1 … A20, A1 … A12` (20 is not a length the model was trained on: the
# distances in its training data were random). The next token is `A13`, predictable only by copying
# from the first half. Our metric is the logit difference `logit(A13) − logit(X)` at the last position,
# for a random other token `X`. Two corrupted prompts break the circuit in two different places:
#
# * **copy**: the first `A13` is replaced by `X`, so the induction heads still find the right place
#   but copy `X` from it;
# * **match**: the first `A12` is replaced by `X`, so the current token `A12` has no earlier copy and
#   the induction heads do not know where to look.

# %%
gen = torch.Generator().manual_seed(0)
batch, half_len, k = 8, 20, 12
first_half = torch.stack([torch.randperm(n_vocab - 1, generator=gen)[:half_len] + 1 for _ in range(batch)])
clean = torch.cat([torch.zeros(batch, 1, dtype=torch.long), first_half, first_half[:, :k]], dim=1)
answer = first_half[:, k]                              # A13, at position k + 1
other = (answer + torch.randint(1, n_vocab - 1, (batch,), generator=gen) - 1) % (n_vocab - 1) + 1
assert bool((other != answer).all())
corrupted_copy = clean.clone()
corrupted_copy[:, k + 1] = other                       # the first A13 -> X
corrupted_match = clean.clone()
corrupted_match[:, k] = other                          # the first A12 -> X

logits = model(clean)
accuracy = float((logits[:, -1].argmax(-1) == answer).float().mean())
print("clean prompt 0:", enc.to_str_tokens(clean[0])[:6], "...")
print(f"accuracy on the clean batch: {accuracy:.2f}")
assert accuracy >= 0.9

# %% [markdown]
# ## Head-level DePass
#
# `components=depass_tl.heads()` makes one component per head of every layer (`L{l}H{h}`), plus
# `L{l}.rest` (the residual stream before that layer) and `L{l}.bias`. Each layer is its own exact
# partition: the heads of layer *l*, its `rest` and its `bias` sum to the metric. Each head's share
# includes what later layers do with its output, through the frozen attention patterns.

# %%
_, dc = depass_tl.run_with_depass(model, clean, components=depass_tl.heads())
attrs = dc.logit_attrs(answer, incorrect_tokens=other)          # [component, batch]
clean_ld = logits[torch.arange(batch), -1, answer] - logits[torch.arange(batch), -1, other]
for layer in range(model.cfg.n_layers):
    rows = [c for c, lab in enumerate(dc.labels) if lab.startswith(f"L{layer}")]
    err = float((attrs[rows].sum(0) - clean_ld).abs().max())
    print(f"layer {layer}: heads + rest + bias = metric, max error {err:.1e}")
    assert err < 1e-3

mean_attrs = attrs.mean(1, keepdim=True)
head_labels = [lab for lab in dc.labels if "H" in lab]
depass_rank = sorted(head_labels, key=lambda lab: -float(mean_attrs[dc.component(lab)]))
print("heads ranked by DePass share:", depass_rank)
share = {lab: float(mean_attrs[dc.component(lab)]) for lab in head_labels}
layer0 = [v for lab, v in share.items() if lab.startswith("L0")]
layer1 = [v for lab, v in share.items() if lab.startswith("L1")]
assert min(layer1) > max(layer0) and min(layer0) < 0.1 * max(layer0)
viz.head_grid(dc, attrs=mean_attrs.expand(-1, batch), target="mean logit(A13) − logit(X)")  # same mean in every column

# %% [markdown]
# Read the grid by rows (one row per layer, one cell per head; blue pushes towards `A13`): every
# layer-1 head has a larger share than any layer-0 head, and one layer-0 head is almost blank. The
# other layer-0 heads get moderate shares: what they wrote reaches the logits directly and through
# what layer 1 copies. Which heads are these? Their attention patterns tell.

# %% [markdown]
# ## What do the heads attend to?
#
# On repeated random sequences, a **previous-token head** puts its attention on the position just
# before the query; an **induction head** puts it on the position right after the earlier copy of the
# query's token. We score every head on both (the fraction of attention on that one position, out of
# up to 40), straight from TransformerLens's attention patterns.

# %%
import pandas as pd

probe = repeated_sequences(32, half_len=half_len, d_vocab=n_vocab, seed=1)
_, cache = model.run_with_cache(probe)
q_prev = torch.arange(2, probe.shape[1])
q_ind = torch.arange(half_len + 1, 2 * half_len + 1)
rows = []
for layer in range(model.cfg.n_layers):
    pattern = cache["pattern", layer]                # [batch, head, query, key]
    for h in range(model.cfg.n_heads):
        rows.append({"head": f"L{layer}H{h}",
                     "previous-token score": float(pattern[:, h, q_prev, q_prev - 1].mean()),
                     "induction score": float(pattern[:, h, q_ind, q_ind - half_len + 1].mean()),
                     "DePass share": float(mean_attrs[dc.component(f"L{layer}H{h}")])})
table = pd.DataFrame(rows).set_index("head")
prev_head = table["previous-token score"].idxmax()
induction_heads = list(table.index[table["induction score"] > 0.5])
print("previous-token head:", prev_head, " induction heads:", induction_heads)
assert prev_head.startswith("L0") and table.loc[prev_head, "previous-token score"] > 0.5
assert induction_heads and all(h.startswith("L1") for h in induction_heads)
assert depass_rank[0] in induction_heads            # DePass's top head is an induction head
table.round(3)

# %% [markdown]
# DePass's largest shares go to the layer-1 induction heads: they move `A13` to the last position. The
# previous-token head gets almost nothing, although the circuit cannot work without it. Keep that in
# mind for the next two sections.
#
# ## Activation patching, corruption 1: copy
#
# `depass_tl.compare.compare(model, clean, corrupted, ...)` runs TransformerLens's own
# `get_act_patch_attn_head_out_all_pos`: for each head, copy its clean output (`hook_z`, every position)
# into the corrupted run and measure how much of the metric comes back. Next to it, it computes each
# head's DePass share on the clean run and on the corrupted run, and their difference
# (`depass_diff`): the number on the same footing as the patching effect.

# %%
def top_head(values):  # [layer, head] -> "L{l}H{h}" of the largest value
    l, h = divmod(int(values.argmax()), values.shape[1])
    return f"L{l}H{h}"

cmp_copy = compare(model, clean, corrupted_copy, answer_tokens=answer, incorrect_tokens=other,
                   layouts=["attn_head_out_all_pos"], progress=False)
lay = cmp_copy["attn_head_out_all_pos"]
print(f"metric: clean {cmp_copy.metric_clean:.2f}, corrupted {cmp_copy.metric_corrupted:.2f}")
print(cmp_copy.agreement(k=3).to_string())
print("top head by patching:", top_head(lay.patching), " by DePass (difference):", top_head(lay.depass_diff))
assert top_head(lay.patching) in induction_heads and top_head(lay.depass_diff) in induction_heads
lost = cmp_copy.metric_clean - cmp_copy.metric_corrupted
shares = [float(lay.patching[int(h[1]), int(h[3])]) / lost for h in induction_heads]
print("fraction of the lost metric each induction head brings back:", [round(x, 2) for x in shares])
assert all(0.1 < x < 0.5 for x in shares)
viz.side_by_side(cmp_copy, "attn_head_out_all_pos")

# %% [markdown]
# When the corruption changes *what* is copied, the two methods agree: the induction heads carry the
# answer. In the figure (DePass difference left, patching right, one colour scale in logits) the same
# four layer-1 cells are blue in both panels and layer 0 stays pale. The four of them share the work, so patching any one back brings only part of the metric
# back (20-30% of it each, here), and DePass splits the credit among them in the same order.
#
# ## Activation patching, corruption 2: match
#
# Now the corruption changes *where* the induction heads look. Patching the previous-token head's clean
# output back restores "the token before position 13 was `A12`" in the keys, the induction heads find
# `A13` again, and the metric comes back. DePass cannot see this: it decomposes each run with that
# run's own attention patterns frozen, and in the clean run and in the corrupted run alike the
# previous-token head's *output* is not what ends up in the logits, so its share, and the difference
# of its shares (`depass_diff`), stay small.

# %%
cmp_match = compare(model, clean, corrupted_match, answer_tokens=answer, incorrect_tokens=other,
                    layouts=["attn_head_out_all_pos"], progress=False)
lay_m = cmp_match["attn_head_out_all_pos"]
print(f"metric: clean {cmp_match.metric_clean:.2f}, corrupted {cmp_match.metric_corrupted:.2f}")
print(cmp_match.agreement(k=3).to_string())
l, h = int(prev_head[1]), int(prev_head[3])
recovered = float(lay_m.patching[l, h])
print(f"patching {prev_head} alone recovers {recovered:.2f} of the {cmp_match.metric_clean - cmp_match.metric_corrupted:.2f} lost")
print(f"its DePass share on the clean run: {table.loc[prev_head, 'DePass share']:.2f}")
assert top_head(lay_m.patching) == prev_head
assert recovered > 0.5 * (cmp_match.metric_clean - cmp_match.metric_corrupted)
assert table.loc[prev_head, "DePass share"] < 0.2 * recovered
assert cmp_match.agreement(k=3).loc["attn_head_out_all_pos", "spearman_diff"] < 0.5
viz.side_by_side(cmp_match, "attn_head_out_all_pos")

# %% [markdown]
# This time the two panels disagree: in the patching panel the previous-token head's cell (layer 0) is
# the darkest, close to the whole metric, while in the DePass panel it is pale and the difference sits
# on the layer-1 induction heads, whose outputs changed between the runs. The agreement table says
# the same in numbers (Spearman well below the copy corruption's 1.0).

# %% [markdown]
# ## Finding the previous-token head with DePass anyway: decompose the keys
#
# DePass decomposes every residual stream, so it can also say which components *build an induction
# head's attention score*. With `components=depass_tl.heads(0)`, `dc0["blocks.0.hook_resid_post"]` is
# layer 1's input split into the four layer-0 heads, `rest` (embeddings) and `bias`. Through layer 1's
# LayerNorm with its scale frozen at the clean value, the key at position 13 is a sum over those
# components, and so is the score `q · k / sqrt(d_head)` of the last position's query against it
# (the query is kept whole). The LayerNorm's bias and `b_K` are constants: they go to the `bias` row.

# %%
_, dc0 = depass_tl.run_with_depass(model, clean, components=depass_tl.heads(0))
_, clean_cache = model.run_with_cache(clean)
last, key_pos = clean.shape[1] - 1, k + 1                  # query: the second A12; key: the first A13

x = dc0["blocks.0.hook_resid_post"][:, :, key_pos]         # [component, batch, d_model]
ln = model.blocks[1].ln1
scale = clean_cache["blocks.1.ln1.hook_scale"][:, key_pos]  # [batch, 1], frozen
normed = (x - x.mean(-1, keepdim=True)) / scale * ln.w      # LayerNorm is linear once the scale is fixed
keys = torch.einsum("cbd,hde->cbhe", normed, model.W_K[1])
keys[dc0.component("bias")] += ln.b @ model.W_K[1] + model.b_K[1]
query = clean_cache["q", 1][:, last]                        # [batch, head, d_head]
score_parts = (keys * query).sum(-1) / model.cfg.d_head ** 0.5   # [component, batch, head]

key = clean_cache["k", 1][:, key_pos]                      # the real key, [batch, head, d_head]
true_scores = (query * key).sum(-1) / model.cfg.d_head ** 0.5  # the real scores (TL 4's native Bridge
                                                            # hooks the pattern as attn_scores, so use q · k)
err = float((score_parts.sum(0) - true_scores).abs().max())
print(f"components sum to the real attention scores: max error {err:.1e}")
assert err < 1e-4

key_table = pd.DataFrame(score_parts.mean(1).numpy(), index=dc0.labels,
                         columns=[f"L1H{h} score" for h in range(model.cfg.n_heads)])
top_builder = {col: key_table[col].idxmax() for col in key_table.columns}
print("largest contribution to each layer-1 head's score on A13:", top_builder)
assert all(top_builder[f"L1H{h} score"] == prev_head for h in range(model.cfg.n_heads)
           if f"L1H{h}" in induction_heads)
key_table.round(2)

# %% [markdown]
# `depass_tl.attention_score_attrs` does the same for a `HookedTransformer` or a `TransformerBridge`
# (every norm kind, rotary embeddings, GQA; it refuses score features that are not linear, such as QK
# norms or soft caps), on the key side or, with `side="query"`, the query side, and checks that the
# parts add up to the model's scores. The query of an induction head is built from the
# *current* token itself (`rest`: the embeddings), its key by the previous-token head.

# %%
keys_split = depass_tl.attention_score_attrs(model, dc0, clean_cache, layer=1, key_pos=key_pos)
assert torch.allclose(keys_split.values, score_parts, atol=1e-5)
queries_split = depass_tl.attention_score_attrs(model, dc0, clean_cache, layer=1, key_pos=key_pos, side="query")
print("completeness error (keys, queries):", keys_split.completeness_error(), queries_split.completeness_error())
query_builder = [dc0.labels[int(c)] for c in queries_split.values.mean(1).argmax(0)]
print("largest contribution to each layer-1 head's query:", query_builder)
assert set(query_builder) == {"rest"}

# %% [markdown]
# ## What we found, and what it teaches
#
# * **Attribution agrees with patching on what is copied.** With the *copy* corruption, head-level
#   DePass and activation patching rank the heads the same way: the layer-1 induction heads carry
#   `A13` to the last position.
# * **Frozen patterns hide the heads that decide where to look.** With the *match* corruption,
#   patching makes the previous-token head the most important head, while its DePass share on the
#   logits is near zero. Both are right: DePass answers "whose *output* ends up in this logit, with
#   attention as it was", patching answers "whose output, if changed, changes the result", and the
#   previous-token head works by changing attention (K-composition). Notebook 03 shows the same
#   limitation on IOI.
# * **DePass still finds it, one level down.** Decomposing the induction heads' attention scores over
#   the layer-0 heads (`depass_tl.attention_score_attrs`) points straight at the previous-token head: it
#   supplies most of the key that matches the query, while the query comes from the current token.
#   The score components add up to the model's own scores exactly.
# * **Which corruption you pick decides what patching sees.** Neither method tells you the mechanism
#   by itself; the attention patterns and a second corruption did.
#
# ## What to try next
#
# 1. Change `half_len` (try 16 or 30; it must stay above `k = 12`) and rerun: the same heads are found,
#    because the model copies by content, not by a fixed offset.
# 2. With `components=depass_tl.sources()` every path is credited to the *first* head on it. Which
#    layer-0 heads get credit for what the induction heads move, and is the previous-token head
#    among them?
# 3. Use `layouts=["attn_head_out_by_pos"]` in `compare` with the *match* corruption: at which position
#    does the previous-token head's output matter?
#
# **Next:** 03 (DePass vs patching on IOI, and where they differ).
