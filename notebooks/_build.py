"""Write the tutorial notebooks (``notebooks/0*.ipynb``) from the cell sources below.

The notebooks are committed with no outputs and ``execution_count`` None; edit this file and run
``python notebooks/_build.py`` rather than editing the ``.ipynb`` files by hand, so the two never
drift apart. ``tests/test_notebooks.py`` executes every notebook (06 only when GPT-2's weights are
cached) and checks that the committed files carry no outputs.

Each notebook is a list of ``("md", text)`` and ``("code", source)`` cells.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

SETUP = """\
import warnings

import torch

torch.set_num_threads(1)  # small models: one thread is fastest and keeps CI machines calm
torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import depass_tl
from depass_tl import viz"""
INFERENCE = SETUP + """
torch.set_grad_enabled(False)  # inference only in this notebook"""

# --------------------------------------------------------------------------------------- 01
NB01 = [
    ("md", """\
# 01 · Quickstart: exact attribution with `run_with_depass`

**What you will learn**

* how to run DePass on a TransformerLens model with one call, `depass_tl.run_with_depass`;
* what the returned `DePassCache` holds (hook name → `[component, batch, pos, d_model]`);
* how to check **completeness** (the components add up to the real activations and logits);
* how to read a **logit attribution** per input token and draw it as a token heatmap;
* how grouping, the DataFrame export and the three MLP rules work.

Everything runs on a CPU in seconds, with a small model that ships with the package."""),
    ("code", INFERENCE),
    ("md", """\
## A model that does a real task

`depass_tl.toy.load("ioi")` returns a 3-layer `HookedTransformer` trained on *indirect object
identification* (IOI): in *"When Mary and John went to the store, John gave a drink to"* the right
next word is the name that was **not** repeated, *Mary*. The toy models have no HuggingFace
tokenizer; the returned `ToyEncoder` plays that role (`encode`, `token_id`, `to_str_tokens`)."""),
    ("code", """\
from depass_tl import toy

model, enc = toy.load("ioi")
prompt = "When Mary and John went to the store, John gave a drink to"
tokens = enc.encode(prompt)                      # [batch=1, pos], BOS prepended
str_tokens = enc.to_str_tokens(tokens)
io, s = enc.token_id(" Mary"), enc.token_id(" John")

logits = model(tokens)
print(str_tokens)
print("prediction:", enc.to_str_tokens(logits[0, -1].argmax(-1, keepdim=True)))
print("logit difference Mary - John:", float(logits[0, -1, io] - logits[0, -1, s]))"""),
    ("md", """\
## The method in four sentences

DePass (*decomposed forward pass*, Hong et al., NeurIPS 2025) first runs the model once and records
every nonlinear coefficient: attention patterns, LayerNorm scales and MLP activations. It then splits
the residual stream into additive **components**, by default one per input token (`tok{p}` holds the
embedding at position `p`), plus a `bias` component for every constant the model adds. Each component
is pushed through the rest of the network with those coefficients *frozen*, which makes every layer
linear in the components (MLP activations are shared out by a rule, see below). So every later
activation, and every logit, is an **exact sum** over components."""),
    ("code", """\
logits, dc = depass_tl.run_with_depass(model, tokens)   # like model.run_with_cache(tokens)
print(dc)
print("labels:", dc.labels)
print("shape at blocks.2.hook_resid_post:", tuple(dc["blocks.2.hook_resid_post"].shape))
print("TL shorthand works too:", tuple(dc["resid_post", 2].shape))"""),
    ("md", """\
The cache is keyed by the usual TransformerLens hook names. Axis 0 is the component axis, aligned
with `dc.labels`: one `tok{p}` per position and the `bias` last.

## Completeness: the components add up

`dc.completeness_error()` returns, for every stored hook and for the logits, the largest
`|Σ components − clean activation|` (`relative=True` divides by the largest clean value). It is
the first thing to check: a decomposition that does not add up attributes something else."""),
    ("code", """\
errors = dc.completeness_error(relative=True)
worst = max(errors, key=errors.get)
print(f"worst relative completeness error: {errors[worst]:.2e} at {worst}")
print(f"logits: {errors['logits']:.2e}")
assert max(errors.values()) < 1e-4, errors  # float32 model: exact up to rounding"""),
    ("md", """\
## Which tokens produce the answer?

`dc.logit_attrs(answer, incorrect_tokens=other)` projects every component of the final residual
stream onto the unembedding direction `W_U[:, answer] − W_U[:, other]`: one number per component and
prompt (`[component, batch]`). They sum exactly to the model's logit difference."""),
    ("code", """\
attrs = dc.logit_attrs(io, incorrect_tokens=s)          # [component, batch]
clean_ld = logits[0, -1, io] - logits[0, -1, s]
print(f"sum of attributions {float(attrs[:, 0].sum()):.5f} = logit difference {float(clean_ld):.5f}")
assert torch.allclose(attrs[:, 0].sum(), clean_ld, atol=1e-4)

for label, tok, a in sorted(zip(dc.labels, str_tokens + ["(bias)"], attrs[:, 0].tolist()), key=lambda r: -abs(r[2]))[:6]:
    print(f"{label:>6} {tok!r:>10} {a:+.3f}")"""),
    ("code", """\
viz.token_heatmap(dc, io, incorrect_tokens=s, str_tokens=str_tokens)"""),
    ("md", """\
The heatmap colours each token by its signed share of *logit(Mary) − logit(John)* (blue pushes
towards *Mary*, red towards *John*). The cell below checks the claim a reader of IOI circuits would expect: the biggest
positive share comes from the indirect object itself, the token the model has to copy."""),
    ("code", """\
top = int(attrs[:-1, 0].argmax())
print("largest positive share:", dc.labels[top], repr(str_tokens[top]), f"{float(attrs[top, 0]):+.3f}")
print("share of the first ' John' (the subject):", f"{float(attrs[str_tokens.index(' John'), 0]):+.3f}")
assert str_tokens[top] == " Mary\""""),
    ("md", """\
## Tables and groups

`dc.to_dataframe(...)` gives the same numbers in long format (one row per prompt and component);
`dc.group({...})` sums components into named groups (by a list of labels or a regular expression)
and returns a new cache, still complete."""),
    ("code", """\
df = dc.to_dataframe(io, incorrect_tokens=s)
print(df.sort_values("attribution", ascending=False).head(5).to_string(index=False))

names = [f"tok{p}" for p, t in enumerate(str_tokens) if t in (" Mary", " John")]
grouped = dc.group({"names": names, "other words": r"tok\\d+"})
print()
print(dict(zip(grouped.labels, grouped.logit_attrs(io, incorrect_tokens=s)[:, 0].round(decimals=3).tolist())))
assert max(grouped.completeness_error(relative=True).values()) < 1e-4"""),
    ("md", """\
## MLP rules

Attention and norms become linear once patterns and scales are frozen; an MLP neuron does not. DePass
shares each neuron's real activation among the components by a rule, computed from each component's
contribution `γ_c` to the neuron's pre-activation:

* `softmax` (the paper's default): shares `softmax(γ / 0.1)`;
* `ratio`: the frozen slope `post / pre` times `γ_c`, which makes the whole replay linear;
* `max`: the whole neuron to the largest `γ_c`;
* `taylor` (the official code's): `(act(g) / g) γ_c`; the same as `ratio` here (the toy's MLPs are
  not gated), different on gated MLPs (Llama), where it splits along the gate.

All are exact (the total is the real activation); they differ in how it is allocated. To see whether
the choice matters for a question, `depass_tl.evaluate.rule_sensitivity(model, tokens, io,
incorrect=s)` compares every rule and temperature from one capture."""),
    ("code", """\
from depass_tl.replay.rules import rule_names

rows = {}
for rule in rule_names():
    _, d = depass_tl.run_with_depass(model, tokens, mlp_rule=rule)
    a = d.logit_attrs(io, incorrect_tokens=s)[:, 0]
    rows[rule] = {"' Mary' share": float(a[str_tokens.index(" Mary")]),
                  "top token": str_tokens[int(a[:-1].argmax())],
                  "max rel. error": max(d.completeness_error(relative=True).values())}
    assert rows[rule]["max rel. error"] < 1e-4
import pandas as pd
pd.DataFrame(rows).T"""),
    ("md", """\
The table shows the IO token's share under each rule and which token each rule ranks first; the
allocations differ in size, and every rule stays complete.

## Other components

Tokens are one choice. `components=` also takes `depass_tl.heads(layer)`, `modules(layer)`,
`neurons(layer, top_k=...)`, `subspace(hook, basis)`, `sources()` (every head and MLP, credited where
it writes) or `custom(hook, tensor, labels)`. The same cache methods apply:"""),
    ("code", """\
_, dc_heads = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads())
print(dc_heads.labels)
viz.head_grid(dc_heads, io, incorrect_tokens=s)"""),
    ("md", """\
Notebook 02 uses these head components to find the heads that do a task.

## Exercises

1. Swap the names (*"When John and Mary …, Mary gave a drink to"*) and check that the attribution
   follows the indirect object.
2. Run `depass_tl.run_with_depass(model, tokens, components=depass_tl.tokens(separate_pos_embed=True))`:
   how much of the answer comes from *where* the name is rather than *which* name it is?
3. Batch several prompts (`enc.encode([...])` with prompts of the same length) and average
   `logit_attrs` over the batch.
4. Save a figure with `viz.save(fig, "heatmap.html")`.

**Next:** 02 (finding heads and checking them with activation patching)."""),
]

# --------------------------------------------------------------------------------------- 02
NB02 = [
    ("md", """\
# 02 · The induction circuit: head-level DePass, checked by activation patching

**What you will learn**

* how to attribute a prediction to every attention head with `components=depass_tl.heads()`;
* how to check the ranking with TransformerLens activation patching, through `depass_tl.compare`;
* how to tell *what* a head does from its attention pattern (previous-token and induction scores);
* why DePass gives the **previous-token head** almost no credit while patching can make it the most
  important head, and how DePass still finds it one level down, in the induction head's *keys*.

The toy model `toy.load("induction")` is a 2-layer attention-only transformer trained on random
tokens in which earlier segments recur at random distances (`depass_tl.toy.data.copy_sequences`),
so the only way to predict a repeat is by content. The textbook solution is an **induction
circuit** (Elhage et al., 2021; Olsson et al., 2022): a *previous-token head* in layer 0 writes "the
token before me was A" at every position, and an *induction head* in layer 1 uses that (in its
keys: *K-composition*) to attend from the second A to the token right after the first A, and copies
it. We look for those two kinds of head."""),
    ("code", INFERENCE + """
from depass_tl import toy
from depass_tl.compare import compare
from depass_tl.toy.data import repeated_sequences

model, enc = toy.load("induction")
n_vocab = model.cfg.d_vocab  # ids 1 .. n_vocab - 1 are words, 0 is BOS
print(toy.info("induction")["description"])"""),
    ("md", """\
## Data: a clean batch and two corruptions

Each clean prompt is `BOS, A1 … A20, A1 … A12` (20 is not a length the model was trained on: the
distances in its training data were random). The next token is `A13`, predictable only by copying
from the first half. Our metric is the logit difference `logit(A13) − logit(X)` at the last position,
for a random other token `X`. Two corrupted prompts break the circuit in two different places:

* **copy**: the first `A13` is replaced by `X`, so the induction heads still find the right place
  but copy `X` from it;
* **match**: the first `A12` is replaced by `X`, so the current token `A12` has no earlier copy and
  the induction heads do not know where to look."""),
    ("code", """\
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
assert accuracy >= 0.9"""),
    ("md", """\
## Head-level DePass

`components=depass_tl.heads()` makes one component per head of every layer (`L{l}H{h}`), plus
`L{l}.rest` (the residual stream before that layer) and `L{l}.bias`. Each layer is its own exact
partition: the heads of layer *l*, its `rest` and its `bias` sum to the metric. Each head's share
includes what later layers do with its output, through the frozen attention patterns."""),
    ("code", """\
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
viz.head_grid(dc, attrs=mean_attrs.expand(-1, batch), target="mean logit(A13) − logit(X)")  # same mean in every column"""),
    ("md", """\
## What do the heads attend to?

On repeated random sequences, a **previous-token head** puts its attention on the position just
before the query; an **induction head** puts it on the position right after the earlier copy of the
query's token. We score every head on both (the fraction of attention on that one position, out of
up to 40), straight from TransformerLens's attention patterns."""),
    ("code", """\
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
table.round(3)"""),
    ("md", """\
DePass's largest shares go to the layer-1 induction heads: they move `A13` to the last position. The
previous-token head gets almost nothing, although the circuit cannot work without it. Keep that in
mind for the next two sections.

## Activation patching, corruption 1: copy

`depass_tl.compare.compare(model, clean, corrupted, ...)` runs TransformerLens's own
`get_act_patch_attn_head_out_all_pos`: for each head, copy its clean output (`hook_z`, every position)
into the corrupted run and measure how much of the metric comes back. Next to it, it computes each
head's DePass share on the clean run and on the corrupted run, and their difference
(`depass_diff`): the number on the same footing as the patching effect."""),
    ("code", """\
def top_head(values):  # [layer, head] -> "L{l}H{h}" of the largest value
    l, h = divmod(int(values.argmax()), values.shape[1])
    return f"L{l}H{h}"

cmp_copy = compare(model, clean, corrupted_copy, answer_tokens=answer, incorrect_tokens=other,
                   layouts=["attn_head_out_all_pos"])
lay = cmp_copy["attn_head_out_all_pos"]
print(f"metric: clean {cmp_copy.metric_clean:.2f}, corrupted {cmp_copy.metric_corrupted:.2f}")
print(cmp_copy.agreement(k=3).to_string())
print("top head by patching:", top_head(lay.patching), " by DePass (difference):", top_head(lay.depass_diff))
assert top_head(lay.patching) in induction_heads and top_head(lay.depass_diff) in induction_heads
lost = cmp_copy.metric_clean - cmp_copy.metric_corrupted
shares = [float(lay.patching[int(h[1]), int(h[3])]) / lost for h in induction_heads]
print("fraction of the lost metric each induction head brings back:", [round(x, 2) for x in shares])
assert all(0.1 < x < 0.5 for x in shares)
viz.side_by_side(cmp_copy, "attn_head_out_all_pos")"""),
    ("md", """\
When the corruption changes *what* is copied, the two methods agree: the induction heads carry the
answer. The four of them share the work, so patching any one back brings only part of the metric
back (20-30% of it each, here), and DePass splits the credit among them in the same order.

## Activation patching, corruption 2: match

Now the corruption changes *where* the induction heads look. Patching the previous-token head's clean
output back restores "the token before position 13 was `A12`" in the keys, the induction heads find
`A13` again, and the metric comes back. DePass cannot see this: it decomposes each run with that
run's own attention patterns frozen, and in the clean run and in the corrupted run alike the
previous-token head's *output* is not what ends up in the logits, so its share, and the difference
of its shares (`depass_diff`), stay small."""),
    ("code", """\
cmp_match = compare(model, clean, corrupted_match, answer_tokens=answer, incorrect_tokens=other,
                    layouts=["attn_head_out_all_pos"])
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
viz.side_by_side(cmp_match, "attn_head_out_all_pos")"""),
    ("md", """\
## Finding the previous-token head with DePass anyway: decompose the keys

DePass decomposes every residual stream, so it can also say which components *build an induction
head's attention score*. With `components=depass_tl.heads(0)`, `dc0["blocks.0.hook_resid_post"]` is
layer 1's input split into the four layer-0 heads, `rest` (embeddings) and `bias`. Through layer 1's
LayerNorm with its scale frozen at the clean value, the key at position 13 is a sum over those
components, and so is the score `q · k / sqrt(d_head)` of the last position's query against it
(the query is kept whole). The LayerNorm's bias and `b_K` are constants: they go to the `bias` row."""),
    ("code", """\
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

true_scores = clean_cache["attn_scores", 1][:, :, last, key_pos]
err = float((score_parts.sum(0) - true_scores).abs().max())
print(f"components sum to the real attention scores: max error {err:.1e}")
assert err < 1e-4

key_table = pd.DataFrame(score_parts.mean(1).numpy(), index=dc0.labels,
                         columns=[f"L1H{h} score" for h in range(model.cfg.n_heads)])
top_builder = {col: key_table[col].idxmax() for col in key_table.columns}
print("largest contribution to each layer-1 head's score on A13:", top_builder)
assert all(top_builder[f"L1H{h} score"] == prev_head for h in range(model.cfg.n_heads)
           if f"L1H{h}" in induction_heads)
key_table.round(2)"""),
    ("md", """\
`depass_tl.attention_score_attrs` does the same for a `HookedTransformer` (every norm kind, rotary
embeddings, GQA; it refuses score features that are not linear, such as QK norms or soft caps), on
the key side or, with `side="query"`, the query side, and checks that the parts add up to
`hook_attn_scores`. The query of an induction head is built from the
*current* token itself (`rest`: the embeddings), its key by the previous-token head."""),
    ("code", """\
keys_split = depass_tl.attention_score_attrs(model, dc0, clean_cache, layer=1, key_pos=key_pos)
assert torch.allclose(keys_split.values, score_parts, atol=1e-5)
queries_split = depass_tl.attention_score_attrs(model, dc0, clean_cache, layer=1, key_pos=key_pos, side="query")
print("completeness error (keys, queries):", keys_split.completeness_error(), queries_split.completeness_error())
query_builder = [dc0.labels[int(c)] for c in queries_split.values.mean(1).argmax(0)]
print("largest contribution to each layer-1 head's query:", query_builder)
assert set(query_builder) == {"rest"}"""),
    ("md", """\
## What we found, and what it teaches

* **Attribution agrees with patching on what is copied.** With the *copy* corruption, head-level
  DePass and activation patching rank the heads the same way: the layer-1 induction heads carry
  `A13` to the last position.
* **Frozen patterns hide the heads that decide where to look.** With the *match* corruption,
  patching makes the previous-token head the most important head, while its DePass share on the
  logits is near zero. Both are right: DePass answers "whose *output* ends up in this logit, with
  attention as it was", patching answers "whose output, if changed, changes the result", and the
  previous-token head works by changing attention (K-composition). Notebook 03 shows the same
  limitation on IOI.
* **DePass still finds it, one level down.** Decomposing the induction heads' attention scores over
  the layer-0 heads (`depass_tl.attention_score_attrs`) points straight at the previous-token head: it
  supplies most of the key that matches the query, while the query comes from the current token.
  The score components add up to TransformerLens's own `attn_scores` exactly.
* **Which corruption you pick decides what patching sees.** Neither method tells you the mechanism
  by itself; the attention patterns and a second corruption did.

## Exercises

1. Change `half_len` (try 16 or 30; it must stay above `k = 12`) and rerun: the same heads are found,
   because the model copies by content, not by a fixed offset.
2. With `components=depass_tl.sources()` every path is credited to the *first* head on it. Which
   layer-0 heads get credit for what the induction heads move, and is the previous-token head
   among them?
3. Use `layouts=["attn_head_out_by_pos"]` in `compare` with the *match* corruption: at which position
   does the previous-token head's output matter?

**Next:** 03 (DePass vs patching on IOI, and where they differ)."""),
]

# --------------------------------------------------------------------------------------- 03
NB03 = [
    ("md", """\
# 03 · IOI side by side: DePass vs activation patching, and why they differ

**What you will learn**

* how to put DePass and TransformerLens activation patching on the same axes with
  `depass_tl.compare.compare`, for residual positions, module outputs and heads;
* how to read the agreement table (rank correlation, top-k overlap);
* where the two methods disagree on IOI, and why: DePass freezes attention patterns (and MLP
  activations), so it cannot credit an input that matters by changing *where* a head looks (a QK
  effect) or how strongly a neuron fires.

Model: the `ioi` toy (3 layers, 4 heads each, MLPs)."""),
    ("code", INFERENCE + """
import pandas as pd
from depass_tl import toy
from depass_tl.compare import compare
from depass_tl.toy.data import ioi_prompts

model, enc = toy.load("ioi")"""),
    ("md", """\
## Clean and corrupted prompts

Clean: *"When A and B went to the P, S gave a O to"* with S the repeated name; the answer is the
other name, the indirect object IO. Corrupted: the same sentence with the second S replaced by IO,
which turns the answer around. The two prompts differ at **one position** (the second name, "S2").
Metric: `logit(IO) − logit(S)` at the last position, averaged over 8 prompts of one template."""),
    ("code", """\
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
print("the prompts differ only at position", s2_pos, repr(str_tokens[s2_pos]))"""),
    ("md", """\
## Compare

For every cell of TransformerLens's patching functions (`get_act_patch_resid_pre`, `…_attn_out`,
`…_mlp_out`, `…_attn_head_out_by_pos`, `…_attn_head_out_all_pos`), `compare` reports

* `patching`: metric(corrupted run with that cell patched in from the clean run) − metric(corrupted);
* `depass_clean`, `depass_corrupted`: the DePass share of that cell (the activation the patch would
  overwrite, replayed to the logits with frozen coefficients) on each run, and `depass_diff`, their
  difference.

If no attention pattern, norm scale or MLP activation downstream of a cell changes between the runs,
`depass_diff` equals the patching effect exactly. Otherwise they differ, so we compare rankings."""),
    ("code", """\
cmp = compare(model, clean, corrupted, answer_tokens=io, incorrect_tokens=s)
print(f"metric: clean {cmp.metric_clean:.2f}, corrupted {cmp.metric_corrupted:.2f}")
assert cmp.metric_clean > 0 > cmp.metric_corrupted
agreement = cmp.agreement(k=5)
agreement.round(3)"""),
    ("md", """\
Read the table row by row: `spearman_diff` is the rank correlation of `depass_diff` with patching
over all cells of a layout (1 = same order), `top_k_overlap_diff` the share of the 5 largest cells
they have in common, `max_abs_diff` the largest gap in value.

## Heads: where they agree"""),
    ("code", """\
heads = cmp["attn_head_out_all_pos"]
def top_head(values):
    l, h = divmod(int(values.abs().argmax()), values.shape[1])
    return f"L{l}H{h}"
print("top head by patching:  ", top_head(heads.patching), f"({float(heads.patching.abs().max()):.2f})")
print("top head by DePass diff:", top_head(heads.depass_diff), f"({float(heads.depass_diff.abs().max()):.2f})")
assert top_head(heads.patching) == top_head(heads.depass_diff)
assert top_head(heads.patching).startswith(f"L{model.cfg.n_layers - 1}")  # a last-layer head
viz.side_by_side(cmp, "attn_head_out_all_pos")"""),
    ("md", """\
Both methods put the same head first: a last-layer head that moves the answer to the final
position. The agreement table shows how well the rest of the ranking matches.

## Residual positions: where they differ"""),
    ("code", """\
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
viz.side_by_side(cmp, "resid_pre")"""),
    ("md", """\
In layer 0 the clean and corrupted residual streams differ only at S2, so patching can only have an
effect there, and it carries the whole metric. DePass gives S2 only part of the difference; the
rest lands on positions whose tokens are **identical** in the two prompts.

An identical token can only get a different DePass share if the coefficients it is replayed through
differ between the two runs: attention patterns, norm scales, MLP activations. S2 changes those
coefficients downstream, and DePass, which freezes each run's coefficients, cannot credit that change
to S2; it shows up on the tokens whose paths were changed. Let us measure how far S2 moves the
coefficients."""),
    ("code", """\
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
assert float(coefficient_changes["max attention change (TV)"].max()) > 0.1"""),
    ("md", """\
Both kinds of coefficients move: the table gives, per layer, how much the attention rows at and after
S2 change (total-variation distance, 0 = same pattern, 1 = disjoint) and how much the MLP activations
at the final position change. The attention part is a **QK effect**: the S2 token changes *where*
heads look, and with frozen patterns DePass cannot see that, as the DePass paper states. The MLP
part is the analogous limitation for frozen activations.

What about the top head itself? Where does it look from the final position?"""),
    ("code", """\
name_head = top_head(heads.patching)
l, h = int(name_head[1]), int(name_head[3])
for name, c in (("clean", cache_clean), ("corrupted", cache_corrupt)):
    to_s2 = float(c["pattern", l][:, h, -1, s2_pos].mean())
    print(f"{name:>9}: {name_head} puts {to_s2:.2f} of its attention from the last token on the S2 position")
    assert to_s2 > 0.5"""),
    ("md", """\
The top head reads the S2 position in both runs: its own pattern hardly depends on the corruption.
It moves to the final position whatever the earlier layers wrote at S2, and *that* is decided by heads
and MLPs whose coefficients depend on the S2 token. (This toy model solves IOI differently from
GPT-2, whose name movers look at the IO token itself; notebook 06 runs the same analysis there.)

* **Patching** re-runs the model, so patching S2 also restores every coefficient S2 controls, and
  S2 gets all the credit: it answers *which inputs is the output sensitive to?*
* **DePass** keeps each run's coefficients and follows the *content*: it answers *where does the
  answer's vector come from in this run?* The difference between two runs then mixes S2's own content
  with the coefficient changes S2 caused.

Neither answer is wrong; they answer different questions, and where they disagree, some attention
pattern or activation depends on the input.

## Exercises

1. Use `mlp_rule="ratio"` in `compare` and compare the agreement tables.
2. Print `cmp.to_dataframe()` and find the cells with the largest `|depass_diff − patching|`.
3. Try the "ABC" corruption: replace S2 by a third name, which neither repeats a name nor names the
   other one. Does the top head's pattern change now? Which layouts agree better?

**Next:** 04 (subspace patching and the interpretability illusion)."""),
]

# --------------------------------------------------------------------------------------- 04
NB04 = [
    ("md", """\
# 04 · The subspace illusion: when patching a direction works for the wrong reason

**What you will learn**

* subspace activation patching, `h ← h + V Vᵀ (h' − h)`, with `subspace_patch_hook`;
* the *interpretability illusion* (Makelov, Lange & Nanda, ICLR 2024): a direction whose patch moves
  the output because it reads a variable on one axis and writes it on another, dormant one;
* the `illusion_report`: rowspace/nullspace split, component patches, dormancy and a DePass flow
  check, with a verdict;
* how to train a direction with DAS (`train_das`) on a toy model and audit it.

Part 1 is a hand-built 3-neuron example where every number can be checked by hand; part 2 trains a
direction on the `ioi` toy."""),
    ("code", SETUP + """
import math
import pandas as pd
from depass_tl.subspace_patching import illusion_report, subspace_patch_hook, train_das
from depass_tl.subspace_patching.examples import ANSWER, OTHER, SITE, distilled_model, distilled_tokens, logit_diff"""),
    ("md", """\
## Part 1 · The distilled example

One input `x`, a hidden layer (the MLP's post-activation, our patch site) `h = (x, 0, x)` and an output
`y = w · h` with `w = (0, 2, 1)`, so `y = x`. Unit 1 varies with `x` but is **disconnected**
(`w₁ = 0`); unit 2 is **dormant** (a ReLU that never fires on the data, but `w₂ = 2`); unit 3 is the
real mediator. Base input `x = 1`, source `x' = 2`. A patch's *effect* is the fraction of the
base→source change of `y` it produces (1 = all of it)."""),
    ("code", """\
model = distilled_model()                       # float64 HookedTransformer, 1 layer
base, source = distilled_tokens(1), distilled_tokens(2)
_, source_cache = model.run_with_cache(source)
y_base, y_source = float(logit_diff(model(base)).detach()), float(logit_diff(model(source)).detach())

@torch.no_grad()
def effect(v):
    hook = subspace_patch_hook(v, source_cache[SITE], pos=-1)
    y = float(logit_diff(model.run_with_hooks(base, fwd_hooks=[(SITE, hook)])))
    return (y - y_base) / (y_source - y_base)

E = torch.eye(3, dtype=torch.float64)
v_ill = (E[0] + E[1]) / math.sqrt(2)
effects = {"e1 (disconnected)": effect(E[0]), "e2 (dormant)": effect(E[1]),
           "e3 (mediator)": effect(E[2]), "v_ill = (e1 + e2)/√2": effect(v_ill)}
print(pd.Series(effects).round(6).to_string())
assert abs(effects["e1 (disconnected)"]) < 1e-9 and abs(effects["e2 (dormant)"]) < 1e-9
assert abs(effects["v_ill = (e1 + e2)/√2"] - 1) < 1e-9 and abs(effects["e3 (mediator)"] - 1) < 1e-9"""),
    ("md", """\
Neither `e1` nor `e2` does anything alone, yet their normalised sum `v_ill` transfers the whole effect,
exactly like the true mediator `e3`. The patch *reads* the change of `x` on the disconnected axis
(`v_illᵀ Δh = Δx/√2`, all of it from unit 1) and *writes* it onto the dormant unit 2, which the output
does read. Patching alone cannot tell `v_ill` from `e3`.

## The illusion report

`illusion_report(model, base, source, site, basis, metric, logit_tokens=(answer, other))` collects:

* **geometry**: `v = v_row + v_null` with respect to the weights that read the site (`W_out`);
* **effects** of patching `v`, its unit row part, its unit null part, and the whole site;
* **dormancy** of each direction on the data;
* a **DePass flow check**: the site is split into the subspace part and the complement, both
  replayed to the logits (`mlp_rule="ratio"`); the credit of each is further split by *active* vs
  *dormant* units. The phantom fraction Φ is the share of the subspace's credit that flows through
  dormant units; the cancellation ratio R measures how much subspace and complement cancel (1 = none)."""),
    ("code", """\
reports = {name: illusion_report(model, base, source, SITE, v, logit_diff, logit_tokens=(ANSWER, OTHER))
           for name, v in (("v_ill", v_ill), ("e3", E[2]))}
summary = pd.DataFrame({name: {"E(v)": r.effect_v, "‖v_row‖": r.row_norm, "Φ (phantom)": r.flow.phantom_fraction,
                               "R (cancellation)": r.flow.cancellation_ratio, "verdict": r.verdict}
                        for name, r in reports.items()})
print(summary.to_string())
print()
print(reports["v_ill"].reasons)
assert reports["v_ill"].verdict == "illusion_suspected" and reports["e3"].verdict == "faithful"
assert reports["v_ill"].flow.completeness_error < 1e-9
ill, mediator = reports["v_ill"].flow, reports["e3"].flow
assert abs(ill.phantom_fraction - 1) < 1e-9 and ill.cancellation_ratio > 1
assert abs(mediator.phantom_fraction) < 1e-9 and abs(mediator.cancellation_ratio - 1) < 1e-9"""),
    ("md", """\
Both directions have the same effect, but the DePass flow check separates them: all of `v_ill`'s
credit runs through the dormant unit (Φ = 1), and the complement cancels it (R > 1), while `e3`'s
credit runs through an active unit with nothing to cancel. The output-level credit alone could not
tell them apart (for a linear read-out the patch effect *is* the change of the subspace's credit);
resolving it by pathway can.

## Part 2 · A direction learned by DAS on the IOI toy

Distributed alignment search (DAS) learns a unit vector `v` at a site so that patching along `v`
makes the base run behave like the source run. We use

* base prompts *"When Mary and John went to the P, John gave a O to"* (answer Mary),
* source prompts with the roles swapped, *"When John and Mary …, Mary gave …"* (answer John),
* the metric `logit(Mary) − logit(John)` per prompt, and
* the site `blocks.0.mlp.hook_post` (layer 0's 256 MLP neurons) at the last position.

The MLP hidden layer is 4 times wider than the residual stream, so `W_out` has a large nullspace:
plenty of room for an illusion. We train on 16 pairs and audit on 16 held-out pairs."""),
    ("code", """\
import itertools, random
from depass_tl import toy
from depass_tl.toy.data import IOI_OBJECTS, IOI_PLACES

ioi, enc = toy.load("ioi")
template = "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to"
fillers = random.Random(0).sample(list(itertools.product(IOI_PLACES, IOI_OBJECTS)), 32)
base_ioi = enc.encode([template.format(A="Mary", B="John", S="John", PLACE=p, OBJECT=o) for p, o in fillers])
source_ioi = enc.encode([template.format(A="John", B="Mary", S="Mary", PLACE=p, OBJECT=o) for p, o in fillers])
mary, john = enc.token_id(" Mary"), enc.token_id(" John")

def metric(logits):                              # one value per prompt
    return logits[:, -1, mary] - logits[:, -1, john]

site = "blocks.0.mlp.hook_post"
train, test = slice(0, 16), slice(16, 32)
das = train_das(ioi, base_ioi[train], source_ioi[train], site, metric, steps=150, lr=0.05, seed=0, progress=False)
print(f"DAS loss: {das.losses[0]:.1f} -> {das.losses[-1]:.2f}")
assert das.losses[-1] < 0.1 * das.losses[0]"""),
    ("code", """\
report = illusion_report(ioi, base_ioi[test], source_ioi[test], site, das.basis, metric, logit_tokens=(mary, john))
print(report)"""),
    ("code", """\
print(f"held-out effect of the DAS direction E(v) = {report.effect_v:.2f}")
print(f"patching the whole MLP hidden layer at that position: E(full) = {report.effect_full:.2f}")
print(f"unit row part alone: E(v_row) = {report.effect_row:.2f}  (rho = {report.rho:.2f}); "
      f"null part alone: {report.effect_null:.2g}")
print(f"flow check: phantom fraction {report.flow.phantom_fraction:.2f}, cancellation ratio {report.flow.cancellation_ratio:.2f}")
print("verdict:", report.verdict)
assert report.effect_v > 0.5 and report.effect_full < 0.5 * report.effect_v
assert report.rho < report.thresholds.rho_max
assert report.flow.cancellation_ratio >= report.thresholds.cancellation_min
assert report.flow.phantom_fraction < report.thresholds.phi_min
assert report.verdict == "illusion_suspected\""""),
    ("md", """\
Read the numbers above in order:

1. The learned direction transfers much of the base→source change on pairs it was not trained on:
   it looks like "the variable that decides the answer".
2. Patching the *whole* MLP hidden layer at that position does far less: a 1-D slice of a site doing
   more than the site itself is the first warning sign, since the site is not a bottleneck.
3. The part of `v` that the rest of the model can read (its `W_out` rowspace part) keeps only a
   fraction of the effect and the nullspace part does nothing alone: the effect needs both, the
   *superadditivity* of the distilled example.
4. The flow check replays the subspace part and the complement of the site through the model with
   DePass. The subspace's credit runs mostly through active neurons here (Φ is small, unlike in the
   distilled example), but it and the complement's credit largely cancel (R is above its threshold):
   along `v` the model normally writes something that the rest of the site offsets, and the patch
   breaks that balance.

The verdict is *illusion suspected*: the direction is a property of the patch, not evidence that the
model stores the IO/S order along it. (Thresholds are in `depass_tl.subspace_patching.Thresholds`.)

## Exercises

1. Train DAS at a residual-stream site, e.g. `blocks.2.hook_resid_pre`, and audit it with
   `reader=` set to the query weights of the head found in notebook 03
   (`ioi.W_Q[2, h]`); does the verdict change?
2. Use `subspace_patch_setter` with `transformer_lens.patching.generic_activation_patch` to patch the
   DAS direction layer by layer.
3. In part 1, sweep `v = cos θ e1 + sin θ e2` and plot the effect against θ (it is `sin 2θ`).

**Next:** 05 (DecompX on a BERT classifier)."""),
]

# --------------------------------------------------------------------------------------- 05
NB05 = [
    ("md", """\
# 05 · DecompX: which words decide a BERT classifier's label?

**What you will learn**

* how to turn a HuggingFace `BertForSequenceClassification` into a TransformerLens `HookedEncoder`
  (`hooked_encoder_from_hf_bert`) plus its pooler and classifier (`SequenceClassificationHead`),
  with no download;
* how `run_decompx` decomposes the class logits into one exact share per input token;
* how to check the explanation against what the classifier was trained to do.

DecompX (Modarressi et al., ACL 2023) is DePass's idea for encoders: split every hidden state into
one vector per input token, and carry the split through attention (patterns frozen), LayerNorm
(scales frozen), the GELU (frozen slope `act(x)/x`), the pooler's tanh and the classifier. The shares
add up exactly to the logits.

To have something to explain we train a tiny BERT (2 layers, width 32) for a few seconds on a
synthetic sentiment task."""),
    ("code", SETUP + """
import random, warnings
import pandas as pd
import transformers
from depass_tl.decompx import SequenceClassificationHead, hooked_encoder_from_hf_bert, run_decompx

warnings.filterwarnings("ignore", category=DeprecationWarning)
transformers.logging.set_verbosity_error()"""),
    ("md", """\
## The task

Sentences of five words: filler words, one sentiment word (*good*, *great* → positive; *bad*,
*awful* → negative), and sometimes *not* right before it, which flips the label. Only the sentiment
word and *not* matter; an explanation should point at them."""),
    ("code", """\
vocab = ["[PAD]", "[CLS]", "[SEP]", "not", "good", "great", "bad", "awful",
         "the", "film", "was", "plot", "acting", "it", "really", "quite", "very", "story"]
index = {w: i for i, w in enumerate(vocab)}
POSITIVE, NEGATIVE, FILLER = {"good", "great"}, {"bad", "awful"}, vocab[8:]

def sample(rng):
    words = [rng.choice(FILLER) for _ in range(5)]
    sentiment, negated, i = rng.choice(sorted(POSITIVE | NEGATIVE)), rng.random() < 0.5, rng.randrange(1, 5)
    words[i] = sentiment
    if negated:
        words[i - 1] = "not"
    return ["[CLS]"] + words + ["[SEP]"], int((sentiment in POSITIVE) != negated)

rng = random.Random(0)
def batch(n):
    sents, labels = zip(*[sample(rng) for _ in range(n)])
    return torch.tensor([[index[w] for w in s] for s in sents]), torch.tensor(labels)

print(sample(random.Random(1)))"""),
    ("code", """\
cfg = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                              intermediate_size=64, max_position_embeddings=16, num_labels=2,
                              attn_implementation="eager")
torch.manual_seed(0)
bert = transformers.BertForSequenceClassification(cfg)
optimizer = torch.optim.AdamW(bert.parameters(), lr=3e-3)
bert.train()
for step in range(300):
    x, y = batch(64)
    loss = bert(input_ids=x, labels=y).loss
    optimizer.zero_grad(); loss.backward(); optimizer.step()
bert.eval()

test_x, test_y = batch(200)
with torch.no_grad():
    accuracy = float((bert(input_ids=test_x).logits.argmax(-1) == test_y).float().mean())
print(f"final training loss {loss.item():.4f}, held-out accuracy {accuracy:.3f}")
assert accuracy > 0.95"""),
    ("md", """\
## Convert and decompose

`hooked_encoder_from_hf_bert(state_dict, config)` builds the `HookedEncoder`;
`SequenceClassificationHead.from_hf_state_dict` reads the pooler and classifier. `run_decompx`
returns the clean logits and a `DecompXResult`, keyed by hook name like a DePass cache, whose
`class_logits` is `[component, batch, n_classes]` (components `tok0 … tok6` and `bias`)."""),
    ("code", """\
encoder = hooked_encoder_from_hf_bert(bert.state_dict(), cfg)
head = SequenceClassificationHead.from_hf_state_dict(bert.state_dict())
logits, result = run_decompx(encoder, test_x, head=head)
# depass_tl.run_with_depass(encoder, test_x, head=head) forwards to the same function.

with torch.no_grad():
    hf_logits = bert(input_ids=test_x).logits
print(result)
print("max |logits - HF logits|:", float((logits - hf_logits).abs().max()))
errors = result.completeness_error()
print(f"worst completeness error: {max(errors.values()):.1e} ({max(errors, key=errors.get)})")
assert torch.allclose(logits, hf_logits, atol=1e-4)
assert max(errors.values()) < 1e-4"""),
    ("md", """\
## Explanations

For each sentence we explain the margin `logit(positive) − logit(negative)`: the share of each token
(positive values push towards *positive*). The table shows a few sentences."""),
    ("code", """\
margin = result.class_logits[..., 1] - result.class_logits[..., 0]     # [component, batch]
token_shares = margin[:-1].T                                           # [batch, pos], bias left out
rows = []
for b in range(6):
    words = [vocab[i] for i in test_x[b]]
    rows.append({"label": int(test_y[b]), **{f"{p}:{w}": round(float(token_shares[b, p]), 2) for p, w in enumerate(words)}})
for r in rows:
    print(r)"""),
    ("code", """\
import plotly.express as px
words = [[vocab[i] for i in row] for row in test_x[:12].tolist()]
fig = px.imshow(token_shares[:12].numpy(), color_continuous_scale="RdBu", color_continuous_midpoint=0,
                labels=dict(x="position", y="sentence", color="share of margin"), aspect="auto",
                title="DecompX: each token's share of logit(positive) − logit(negative)")
fig.update_traces(text=words, texttemplate="%{text}")
fig"""),
    ("md", """\
Does the explanation point at the words that define the label? For every held-out sentence we take
the word with the largest |share| (between `[CLS]` and `[SEP]`) and check whether it is the
sentiment word or *not*. With five words of which one or two matter, picking a word at random would
hit about a third of the time."""),
    ("code", """\
inner = token_shares[:, 1:-1].abs()
top = inner.argmax(-1) + 1
words = [[vocab[i] for i in row] for row in test_x.tolist()]
hit = torch.tensor([words[b][int(top[b])] in POSITIVE | NEGATIVE | {"not"} for b in range(len(words))])
chance = float(torch.tensor([sum(w in POSITIVE | NEGATIVE | {"not"} for w in ws[1:-1]) / 5 for ws in words]).mean())
cls_share = float((token_shares[:, 0].abs() / token_shares.abs().sum(-1)).mean())
print(f"top word is the sentiment word or 'not': {float(hit.float().mean()):.2f} of sentences (chance {chance:.2f})")
print(f"average share of |explanation| on [CLS]: {cls_share:.2f}")
assert float(hit.float().mean()) > max(0.5, 2 * chance)"""),
    ("md", """\
The explanation usually lands on the sentiment word or *not*, well above chance. When it does not,
the usual reason is the one we met in notebook 03: DecompX freezes the attention pattern, so a word
that matters by deciding *where* `[CLS]` attends is credited to the positions attended to (their
values), not to itself. `[CLS]` also carries a share: its own embedding is what the pooler reads.

## Exercises

1. Explain the *negated* sentences only. How is the credit split between *not* and the sentiment word?
2. Compare `bias_policy="decompx"` (DecompX's own rules for spreading biases over tokens) with the
   default `"bias"` component: `run_decompx(..., bias_policy=...)`.
3. Replace the classifier head with `MLMHead.from_encoder(encoder, token_ids=[...])` on a randomly
   initialised `HookedEncoder` and explain a masked-token prediction.

**Next:** 06 (the same analysis on GPT-2 small, if you have internet)."""),
]

# --------------------------------------------------------------------------------------- 06
NB06 = [
    ("md", """\
# 06 · GPT-2 small on IOI: DePass and activation patching on a real model

**What you will learn**

* the token-level, head-level and patching comparison of notebooks 01–03, on GPT-2 small and the
  indirect-object-identification task of Wang et al. (2022);
* how DePass's head ranking relates to the known IOI circuit (name movers 9.9, 9.6, 10.0;
  negative name movers 10.7, 11.10).

**Needs** GPT-2's weights: `HookedTransformer.from_pretrained("gpt2")` downloads them once (about
500 MB). The test suite runs this notebook only when they are already cached; otherwise it only checks
that the notebook parses. On a CPU most of the time goes into activation patching (a few hundred
forward passes of GPT-2 small on 8 short prompts)."""),
    ("code", INFERENCE + """
import pandas as pd
from transformer_lens import HookedTransformer
from depass_tl.compare import compare

model = HookedTransformer.from_pretrained("gpt2")
model.eval();"""),
    ("md", """\
## Prompts

Eight prompts from one template with four name pairs in both orders; the clean answer is the
indirect object. As in notebook 03, the corrupted prompt replaces the second mention of the subject
by the indirect object, which turns the answer around and changes one position only."""),
    ("code", """\
template = "When {A} and {B} went to the store, {S} gave a drink to"
pairs = [("Mary", "John"), ("Tom", "James"), ("Dan", "Sid"), ("Martin", "Amy")]
clean_texts, corrupt_texts, io_names, s_names = [], [], [], []
for a, b in pairs:
    for io_name, s_name in ((a, b), (b, a)):
        clean_texts.append(template.format(A=a, B=b, S=s_name))
        corrupt_texts.append(template.format(A=a, B=b, S=io_name))
        io_names.append(" " + io_name)
        s_names.append(" " + s_name)
clean, corrupted = model.to_tokens(clean_texts), model.to_tokens(corrupt_texts)
io = torch.tensor([model.to_single_token(n) for n in io_names])
s = torch.tensor([model.to_single_token(n) for n in s_names])
assert clean.shape == corrupted.shape

logits = model(clean)
ld = logits[torch.arange(len(io)), -1, io] - logits[torch.arange(len(io)), -1, s]
print("logit difference IO - S per prompt:", ld.round(decimals=2).tolist())
assert float(ld.mean()) > 0"""),
    ("md", """\
## Tokens

Token-level DePass on the first prompt: which input tokens produce `logit(IO) − logit(S)`?"""),
    ("code", """\
_, dc = depass_tl.run_with_depass(model, clean_texts[0])
errors = dc.completeness_error(relative=True)
print(f"worst relative completeness error: {max(errors.values()):.1e}")
assert max(errors.values()) < 1e-3  # float32, 12 layers
attrs = dc.logit_attrs(io_names[0], incorrect_tokens=s_names[0])[:, 0]
top = int(attrs[:-1].argmax())
print("largest positive share:", repr(dc.str_tokens[0][top]), f"{float(attrs[top]):+.2f}")
viz.token_heatmap(dc, io_names[0], incorrect_tokens=s_names[0])"""),
    ("md", """\
## Heads

`components=depass_tl.heads()` over all 12 layers, averaged over the 8 prompts. Each layer's heads,
`rest` and `bias` sum to the metric."""),
    ("code", """\
_, dc_heads = depass_tl.run_with_depass(model, clean, components=depass_tl.heads())
head_attrs = dc_heads.logit_attrs(io, incorrect_tokens=s).mean(1, keepdim=True)
labels = [lab for lab in dc_heads.labels if "H" in lab]
ranked = sorted(labels, key=lambda lab: -float(head_attrs[dc_heads.component(lab)]))
print("most positive heads:", ranked[:5])
print("most negative heads:", ranked[-3:][::-1])
known_name_movers = {"L9H9", "L9H6", "L10H0"}
print("known name movers among DePass's top 5:", sorted(known_name_movers & set(ranked[:5])))
assert known_name_movers & set(ranked[:5])
viz.head_grid(dc_heads, attrs=head_attrs.expand(-1, len(io)), target="mean logit(IO) − logit(S)")"""),
    ("md", """\
The heads with the largest positive shares should include the name movers that Wang et al. found by
path patching; the printed lists let you check which ones, and where the negative name movers land.

## DePass vs activation patching"""),
    ("code", """\
cmp = compare(model, clean, corrupted, answer_tokens=io, incorrect_tokens=s,
              layouts=["resid_pre", "attn_head_out_all_pos"])
print(f"metric: clean {cmp.metric_clean:.2f}, corrupted {cmp.metric_corrupted:.2f}")
cmp.agreement(k=10).round(3)"""),
    ("code", """\
viz.side_by_side(cmp, "attn_head_out_all_pos")"""),
    ("code", """\
heads_cmp = cmp["attn_head_out_all_pos"]
n_heads = model.cfg.n_heads
def ranked_heads(values, k=10):
    return [f"L{i // n_heads}H{i % n_heads}" for i in values.flatten().abs().topk(k).indices.tolist()]
top_patch, top_depass = ranked_heads(heads_cmp.patching), ranked_heads(heads_cmp.depass_diff)
print("top 10 heads by |patching|:   ", top_patch)
print("top 10 heads by |DePass diff|:", top_depass)
print("in both:", [h for h in top_patch if h in top_depass])"""),
    ("code", """\
s2_pos = int((clean[0] != corrupted[0]).nonzero()[0, 0])
resid = cmp["resid_pre"]
share_patch = float(resid.patching[0, s2_pos].abs() / resid.patching[0].abs().sum())
share_depass = float(resid.depass_diff[0, s2_pos].abs() / resid.depass_diff[0].abs().sum())
str_tokens = model.to_str_tokens(clean[0])
print(f"layer 0, share of |effect| at S2 (position {s2_pos}, {str_tokens[s2_pos]!r}): "
      f"patching {share_patch:.2f}, DePass difference {share_depass:.2f}")
print("DePass's largest positions:", [(p, str_tokens[p]) for p in resid.depass_diff[0].abs().topk(4).indices.tolist()])
assert share_patch > 0.99  # the prompts differ only at S2
viz.side_by_side(cmp, "resid_pre")"""),
    ("md", """\
As on the toy model, patching the layer-0 residual stream can only act at the position where the
prompts differ (the second subject), so it puts the whole effect there. Whatever share DePass's
difference puts on *other* positions (printed above) comes from tokens that are identical in both
prompts, so it is caused by attention patterns, norm scales and MLP activations that the second
subject changes downstream; in IOI those include the S-inhibition heads steering the name movers'
attention, a QK effect that frozen patterns cannot credit to its cause. On the heads, compare the
two top-10 lists: expect the heads that *move* the answer (name movers) in both, and heads whose job
is to *steer attention* (Wang et al.'s S-inhibition, induction and duplicate-token heads) to rank
higher under patching than under DePass. Check this against the lists above.

## Next steps

* `layouts=["attn_head_out_by_pos"]` resolves the heads by position (slower: one patching run per
  layer, position and head).
* `components=depass_tl.sources()` credits every head and MLP with what it writes, in one replay.
* Notebook 04's `illusion_report` works on GPT-2 as well; the paper's MLP8 example needs a trained
  DAS direction at `blocks.8.mlp.hook_post`."""),
]

NOTEBOOKS = {
    "01_quickstart.ipynb": NB01,
    "02_induction_circuit.ipynb": NB02,
    "03_ioi_side_by_side.ipynb": NB03,
    "04_subspace_illusion.ipynb": NB04,
    "05_decompx_bert.ipynb": NB05,
    "06_gpt2_ioi.ipynb": NB06,
}


def build(name: str, cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """One notebook with no outputs, deterministic cell ids and a python3 kernel."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    stem = name.split("_")[0]
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell["id"] = f"nb{stem}-{i:02d}"
        if kind == "code":
            cell["execution_count"] = None
            cell["outputs"] = []
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def main(argv: list[str]) -> None:
    wanted = argv or list(NOTEBOOKS)
    for name in wanted:
        path = HERE / name
        nbformat.write(build(name, NOTEBOOKS[name]), str(path))
        print("wrote", path.relative_to(HERE.parent))


if __name__ == "__main__":
    main(sys.argv[1:])
