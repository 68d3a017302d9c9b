# %% [markdown]
# # 01 · Quickstart: exact attribution with `run_with_depass`
#
# **What you will learn**
#
# * how to run DePass on a TransformerLens model with one call, `depass_tl.run_with_depass`;
# * what the returned `DePassCache` holds (hook name → `[component, batch, pos, d_model]`);
# * how to check **completeness** (the components add up to the real activations and logits);
# * how to read a **logit attribution** per input token and draw it as a token heatmap;
# * how grouping, the DataFrame export and the MLP rules work.
#
# Everything runs on a CPU in seconds, with a small model that ships with the package.

# %%
import warnings

import torch

torch.set_num_threads(1)  # small models: one thread is fastest and keeps CI machines calm
torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import depass_tl
from depass_tl import viz
torch.set_grad_enabled(False)  # inference only in this notebook

# %% [markdown]
# ## A model that does a real task
#
# `depass_tl.toy.load("ioi")` returns a small attention-only model trained on *indirect object
# identification* (IOI): in *"When Mary and John went to the store, John gave a drink to"* the right
# next word is the name that was **not** repeated, *Mary*. It is a `TransformerBridge` on TransformerLens 4 and a
# `HookedTransformer` on TL 2/3 (`model_class=` picks one on TL 3); everything below works on both.
# It comes with a word-level tokenizer (`model.to_tokens`, strings everywhere) and a `ToyEncoder`
# over the same vocabulary (`encode`, `token_id`, `to_str_tokens`), which names unknown words.

# %%
from depass_tl import toy

model, enc = toy.load("ioi")
prompt = "When Mary and John went to the store, John gave a drink to"
tokens = enc.encode(prompt)                      # [batch=1, pos], BOS prepended
str_tokens = enc.to_str_tokens(tokens)
io, s = enc.token_id(" Mary"), enc.token_id(" John")

logits = model(tokens)
print(str_tokens)
print("prediction:", enc.to_str_tokens(logits[0, -1].argmax(-1, keepdim=True)))
print("logit difference Mary - John:", float(logits[0, -1, io] - logits[0, -1, s]))

# %% [markdown]
# ## The method in four sentences
#
# DePass (*decomposed forward pass*, Hong et al., NeurIPS 2025) first runs the model once and records
# every nonlinear coefficient: attention patterns, LayerNorm scales and MLP activations. It then splits
# the residual stream into additive **components**, by default one per input token (`tok{p}` holds the
# embedding at position `p`), plus a `bias` component for every constant the model adds. Each component
# is pushed through the rest of the network with those coefficients *frozen*, which makes every layer
# linear in the components (MLP activations are shared out by a rule, see below). So every later
# activation, and every logit, is an **exact sum** over components.

# %%
logits, dc = depass_tl.run_with_depass(model, tokens)   # like model.run_with_cache(tokens)
print(dc)
print("labels:", dc.labels)
last_layer = model.cfg.n_layers - 1
print(f"shape at blocks.{last_layer}.hook_resid_post:", tuple(dc[f"blocks.{last_layer}.hook_resid_post"].shape))
print("TL shorthand works too:", tuple(dc["resid_post", last_layer].shape))

# %% [markdown]
# The cache is keyed by the usual TransformerLens hook names. Axis 0 is the component axis, aligned
# with `dc.labels`: one `tok{p}` per position and the `bias` last.
#
# ## Completeness: the components add up
#
# `dc.completeness_error()` returns, for every stored hook and for the logits, the largest
# `|Σ components − clean activation|` (`relative=True` divides by the largest clean value). It is
# the first thing to check: a decomposition that does not add up attributes something else.

# %%
errors = dc.completeness_error(relative=True)
worst = max(errors, key=errors.get)
print(f"worst relative completeness error: {errors[worst]:.2e} at {worst}")
print(f"logits: {errors['logits']:.2e}")
assert max(errors.values()) < 1e-4, errors  # float32 model: exact up to rounding

# %% [markdown]
# ## Which tokens produce the answer?
#
# `dc.logit_attrs(answer, incorrect_tokens=other)` projects every component of the final residual
# stream onto the unembedding direction `W_U[:, answer] − W_U[:, other]`: one number per component and
# prompt (`[component, batch]`). They sum exactly to the model's logit difference.

# %%
attrs = dc.logit_attrs(io, incorrect_tokens=s)          # [component, batch]
clean_ld = logits[0, -1, io] - logits[0, -1, s]
print(f"sum of attributions {float(attrs[:, 0].sum()):.5f} = logit difference {float(clean_ld):.5f}")
assert torch.allclose(attrs[:, 0].sum(), clean_ld, atol=1e-4)

for label, tok, a in sorted(zip(dc.labels, str_tokens + ["(bias)"], attrs[:, 0].tolist()), key=lambda r: -abs(r[2]))[:6]:
    print(f"{label:>6} {tok!r:>10} {a:+.3f}")

# %%
viz.token_heatmap(dc, " Mary", incorrect_tokens=" John", str_tokens=str_tokens)  # one-token strings work like ids

# %% [markdown]
# The heatmap colours each token by its signed share of *logit(Mary) − logit(John)* (blue pushes
# towards *Mary*, red towards *John*). The cell below checks the claim a reader of IOI circuits would expect: the biggest
# positive share comes from the indirect object itself, the token the model has to copy.

# %%
top = int(attrs[:-1, 0].argmax())
print("largest positive share:", dc.labels[top], repr(str_tokens[top]), f"{float(attrs[top, 0]):+.3f}")
s1, s2 = [p for p, t in enumerate(str_tokens) if t == " John"]
print(f"share of the first ' John' (S1): {float(attrs[s1, 0]):+.3f}, of the second (S2): {float(attrs[s2, 0]):+.3f}")
assert str_tokens[top] == " Mary"
assert attrs[s1, 0] < 0 < attrs[s2, 0]

# %% [markdown]
# The two *John*s pull in opposite directions. The first one pushes towards *John*, as a name in the
# context would. The second one pushes towards *Mary*: it is the repetition that marks John as the
# subject, the name *not* to copy, and what the model carries from the repeated token to the last
# position lowers John's logit there. Notebook 03 follows this signal through the heads.

# %% [markdown]
# ## Tables and groups
#
# `dc.to_dataframe(...)` gives the same numbers in long format (one row per prompt and component);
# `dc.group({...})` sums components into named groups (by a list of labels or a regular expression)
# and returns a new cache, still complete.

# %%
df = dc.to_dataframe(io, incorrect_tokens=s)
print(df.sort_values("attribution", ascending=False).head(5).to_string(index=False))

names = [f"tok{p}" for p, t in enumerate(str_tokens) if t in (" Mary", " John")]
grouped = dc.group({"names": names, "other words": r"tok\d+"})
print()
print(dict(zip(grouped.labels, grouped.logit_attrs(io, incorrect_tokens=s)[:, 0].round(decimals=3).tolist())))
assert max(grouped.completeness_error(relative=True).values()) < 1e-4

# %% [markdown]
# ## MLP rules
#
# Attention and norms become linear once patterns and scales are frozen; an MLP neuron does not. DePass
# shares each neuron's real activation among the components by a rule, computed from each component's
# contribution `γ_c` to the neuron's pre-activation:
#
# * `softmax` (the paper's default): shares `softmax(γ / 0.1)`;
# * `ratio`: the frozen slope `post / pre` times `γ_c`, which makes the whole replay linear;
# * `max`: the whole neuron to the largest `γ_c`;
# * `taylor` (the official code's): `(act(g) / g) γ_c`; the same as `ratio` on MLPs that are not
#   gated, different on gated MLPs (Llama), where it splits along the gate.
#
# All are exact (the total is the real activation); they differ in how it is allocated. Rules only
# matter where MLPs do the work, so for this section we take the `facts` toy: two layers whose MLPs
# recall synthetic facts about two-token subjects (*" Anna Kowal lives in the city of"* → a city), a
# recall that needs both tokens of the name. To see whether the choice matters for a question of your
# own, `depass_tl.evaluate.rule_sensitivity(model, tokens, answer)` compares every rule and
# temperature from one capture.

# %%
from depass_tl.replay.rules import rule_names
from depass_tl.toy.data import FACTS
import pandas as pd

facts_model, facts_enc = toy.load("facts")
fact = FACTS[0]
fact_tokens = facts_enc.encode(fact.prompt)
fact_str = facts_enc.to_str_tokens(fact_tokens)
city = facts_enc.token_id(fact.attribute)
print(repr(fact.prompt), "→", facts_enc.to_str_tokens(facts_model(fact_tokens)[0, -1].argmax(-1, keepdim=True)))
assert int(facts_model(fact_tokens)[0, -1].argmax()) == city

rows, shares = {}, {}
for rule in rule_names():
    _, d = depass_tl.run_with_depass(facts_model, fact_tokens, mlp_rule=rule)
    shares[rule] = d.logit_attrs(city)[:, 0]
    rows[rule] = {f"{fact_str[1]!r} share": float(shares[rule][1]), f"{fact_str[2]!r} share": float(shares[rule][2]),
                  "top token": fact_str[int(shares[rule][:-1].argmax())],
                  "max rel. error": max(d.completeness_error(relative=True).values())}
    assert rows[rule]["max rel. error"] < 1e-4
assert rows["softmax"]["top token"] == fact_str[1] and rows["ratio"]["top token"] == fact_str[2]
assert torch.allclose(shares["taylor"], shares["ratio"], atol=1e-5)
pd.DataFrame(rows).T

# %% [markdown]
# The table shows the shares of the subject's two tokens in the logit of the right city, under each
# rule. Every rule is complete, yet they disagree on *which* token matters most: `softmax` (and `max`)
# give each neuron to the token that drives it hardest and put the first name on top, while `ratio`
# (and `taylor`, the same here) share every neuron in proportion and put the surname on top. When a
# conclusion rests on one token's share, check it under more than one rule.
#
# ## Other components
#
# Tokens are one choice. `components=` also takes `depass_tl.heads(layer)`, `modules(layer)`,
# `neurons(layer, top_k=...)`, `subspace(hook, basis)`, `sources()` (every head and MLP, credited where
# it writes) or `custom(hook, tensor, labels)`. The same cache methods apply:

# %%
_, dc_heads = depass_tl.run_with_depass(model, tokens, components=depass_tl.heads())
print(dc_heads.labels)
head_shares = {lab: float(a) for lab, a in zip(dc_heads.labels, dc_heads.logit_attrs(io, incorrect_tokens=s)[:, 0])
               if "H" in lab}
ranked = sorted(head_shares, key=lambda lab: -abs(head_shares[lab]))
top3 = sum(abs(head_shares[lab]) for lab in ranked[:3]) / sum(abs(v) for v in head_shares.values())
print("largest heads:", {lab: round(head_shares[lab], 2) for lab in ranked[:3]}, f"({top3:.0%} of the total |share|)")
assert top3 > 0.6
viz.head_grid(dc_heads, " Mary", incorrect_tokens=" John")

# %% [markdown]
# The grid has one row per layer and one cell per head, coloured by the head's share of
# *logit(Mary) − logit(John)*. Most cells are pale: three heads carry most of the total, and their
# names are printed above. Notebook 02 uses these head components to find the heads that do a task,
# and notebook 03 names the IOI heads (name movers, S-inhibition) and checks them with patching.
#
# ## What to try next
#
# 1. Swap the names (*"When John and Mary …, Mary gave a drink to"*) and check that the attribution
#    follows the indirect object.
# 2. Run `depass_tl.run_with_depass(model, tokens, components=depass_tl.tokens(separate_pos_embed=True))`:
#    how much of the answer comes from *where* the name is rather than *which* name it is?
# 3. Batch several prompts (`enc.encode([...])` with prompts of the same length) and average
#    `logit_attrs` over the batch.
# 4. Save a figure with `viz.save(fig, "heatmap.html")`.
#
# **Next:** 02 (finding heads and checking them with activation patching).
