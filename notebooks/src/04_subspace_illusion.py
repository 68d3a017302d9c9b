# %% [markdown]
# # 04 · The subspace illusion: when patching a direction works for the wrong reason
#
# **What you will learn**
#
# * subspace activation patching, `h ← h + V Vᵀ (h' − h)`, with `subspace_patch_hook`;
# * the *interpretability illusion* (Makelov, Lange & Nanda, ICLR 2024): a direction whose patch moves
#   the output because it reads a variable on one axis and writes it on another, dormant one;
# * the `illusion_report`: rowspace/nullspace split, component patches, dormancy and a DePass flow
#   check, with a verdict;
# * how to train a subspace with DAS (`train_das`) on a toy model, test it on held-out names and
#   sentence frames, and audit it.
#
# Part 1 is a hand-built 3-neuron example where every number can be checked by hand; part 2 trains
# subspaces on the `ioi` toy across names and sentence frames and tests them on held-out ones.

# %%
import warnings

import torch

torch.set_num_threads(1)  # small models: one thread is fastest and keeps CI machines calm
torch.manual_seed(0)
warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm outside Jupyter widgets

import depass_tl
from depass_tl import viz
import math
import pandas as pd
from depass_tl.subspace_patching import illusion_report, subspace_patch_hook, train_das
from depass_tl.subspace_patching.examples import ANSWER, OTHER, SITE, distilled_model, distilled_tokens, logit_diff

# %% [markdown]
# ## Part 1 · The distilled example
#
# One input `x`, a hidden layer (the MLP's post-activation, our patch site) `h = (x, 0, x)` and an output
# `y = w · h` with `w = (0, 2, 1)`, so `y = x`. Unit 1 varies with `x` but is **disconnected**
# (`w₁ = 0`); unit 2 is **dormant** (a ReLU that never fires on the data, but `w₂ = 2`); unit 3 is the
# real mediator. Base input `x = 1`, source `x' = 2`. A patch's *effect* is the fraction of the
# base→source change of `y` it produces (1 = all of it).

# %%
model = distilled_model()                       # float64, 1 layer (HookedTransformer or Bridge)
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
assert abs(effects["v_ill = (e1 + e2)/√2"] - 1) < 1e-9 and abs(effects["e3 (mediator)"] - 1) < 1e-9

# %% [markdown]
# Neither `e1` nor `e2` does anything alone, yet their normalised sum `v_ill` transfers the whole effect,
# exactly like the true mediator `e3`. The patch *reads* the change of `x` on the disconnected axis
# (`v_illᵀ Δh = Δx/√2`, all of it from unit 1) and *writes* it onto the dormant unit 2, which the output
# does read. Patching alone cannot tell `v_ill` from `e3`.
#
# ## The illusion report
#
# `illusion_report(model, base, source, site, basis, metric, logit_tokens=(answer, other))` collects:
#
# * **geometry**: `v = v_row + v_null` with respect to the weights that read the site (`W_out`);
# * **effects** of patching `v`, its unit row part, its unit null part, and the whole site;
# * **dormancy** of each direction on the data;
# * a **DePass flow check**: the site is split into the subspace part and the complement, both
#   replayed to the logits (`mlp_rule="ratio"`); the credit of each is further split by *active* vs
#   *dormant* units. The phantom fraction Φ is the share of the subspace's credit that flows through
#   dormant units; the cancellation ratio R measures how much subspace and complement cancel (1 = none).

# %%
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
assert abs(mediator.phantom_fraction) < 1e-9 and abs(mediator.cancellation_ratio - 1) < 1e-9

# %% [markdown]
# Both directions have the same effect, but the DePass flow check separates them: all of `v_ill`'s
# credit runs through the dormant unit (Φ = 1), and the complement cancels it (R > 1), while `e3`'s
# credit runs through an active unit with nothing to cancel. The output-level credit alone could not
# tell them apart (for a linear read-out the patch effect *is* the change of the subspace's credit);
# resolving it by pathway can.
#
# ## Part 2 · DAS on the IOI toy: across names and sentence frames, tested on held-out ones
#
# Distributed alignment search (DAS) learns a `k`-dimensional subspace `V` at a site so that patching
# along it makes the base run behave like the source run. A subspace that only works on the prompts it
# was trained on says little about the model, so we train and test on disjoint sets, using the toy's
# own data module (`depass_tl.toy.data`: its names and its training / held-out sentence frames):
#
# * **pairs**: base and source are the *same* sentence except for the repeated subject S2, e.g.
#   *"When Mary and John went to the store, John gave a drink to"* (answer Mary) and
#   *"… , Mary gave a drink to"* (answer John). Everything but "who is the subject" is held fixed;
# * **metric**: `logit(base answer) − logit(base other name)` per prompt (positive on the base,
#   negative on the source). An *effect* is the fraction of the base→source change a patch produces
#   (1 = all of it), projected on each prompt's own change, as in `illusion_report`;
# * **names**: every fourth name of the toy's list is held out of DAS training;
# * **frames**: DAS trains on frames of the toy's training set and is tested on its held-out frames
#   (never seen by the toy either). DAS patches one `[batch, pos]` batch, so we keep the frames of the
#   most common token length;
# * **site**: the residual stream at the last position.

# %%
import collections, random
from dataclasses import dataclass
from depass_tl import toy
from depass_tl.toy import data
from depass_tl.toy.encoder import split_words

ioi, enc = toy.load("ioi")
held_names = data.IOI_NAMES[3::4]                   # never seen by DAS
train_names = [n for n in data.IOI_NAMES if n not in held_names]

def n_words(frame):
    return len(split_words(frame.format(A="Mary", B="John", S="John", IO="Mary", PLACE="store", OBJECT="drink")))

length = collections.Counter(map(n_words, data.IOI_TRAIN_TEMPLATES)).most_common(1)[0][0]
train_frames = [f for f in data.IOI_TRAIN_TEMPLATES if n_words(f) == length]
held_frames = [f for f in data.IOI_HELDOUT_TEMPLATES if n_words(f) == length]
print(f"DAS training names ({len(train_names)}):", " ".join(train_names))
print(f"held-out names ({len(held_names)}):", " ".join(held_names))
print(f"frames of {length} words: {len(train_frames)} for training, {len(held_frames)} held out, e.g.")
print("  train:", train_frames[0], "\n  held out:", held_frames[0])
assert not set(held_names) & set(train_names) and not set(held_frames) & set(train_frames)
assert len(train_frames) >= 2 and len(held_frames) >= 2

# %%
@dataclass
class Pairs:
    base: torch.Tensor      # [batch, pos]
    source: torch.Tensor    # the same sentences with the other name as S2
    answer: torch.Tensor    # [batch] the base's answer (its indirect object)
    other: torch.Tensor     # [batch] the base's subject

    def metric(self, logits):  # one value per prompt
        last = logits[:, -1]
        return last.gather(1, self.answer[:, None])[:, 0] - last.gather(1, self.other[:, None])[:, 0]

def make_pairs(frames, names, n, seed):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        x, y = rng.sample(names, 2)
        fill = dict(A=x, B=y, PLACE=rng.choice(data.IOI_PLACES), OBJECT=rng.choice(data.IOI_OBJECTS))
        frame = rng.choice(frames)
        base, source = frame.format(S=y, **fill), frame.format(S=x, **fill)  # answers x, then y
        if rng.random() < 0.5:                      # half of the bases repeat the first name
            base, source, x, y = source, base, y, x
        rows.append((base, source, enc.token_id(" " + x), enc.token_id(" " + y)))
    base, source, answer, other = zip(*rows)
    return Pairs(enc.encode(list(base)), enc.encode(list(source)), torch.tensor(answer), torch.tensor(other))

sets = {
    "one pair, one frame": make_pairs(train_frames[:1], train_names[:2], 32, seed=0),
    "train": make_pairs(train_frames, train_names, 64, seed=1),
    "held-out names": make_pairs(train_frames, held_names, 64, seed=2),
    "held-out frames": make_pairs(held_frames, train_names, 64, seed=3),
    "held-out both": make_pairs(held_frames, held_names, 64, seed=4),
}
print(enc.decode(sets["train"].base[0]), "→", enc.decode(sets["train"].answer[:1]))
print(enc.decode(sets["train"].source[0]), "→", enc.decode(sets["train"].other[:1]))

@torch.no_grad()
def effect_at(site, basis, pairs):
    _, cache = ioi.run_with_cache(pairs.source, names_filter=[site])
    hook = subspace_patch_hook(basis, cache[site], pos=-1)
    y_base, y_source = pairs.metric(ioi(pairs.base)), pairs.metric(ioi(pairs.source))
    y = pairs.metric(ioi.run_with_hooks(pairs.base, fwd_hooks=[(site, hook)]))
    gap = y_source - y_base
    return float(((y - y_base) * gap).sum() / (gap**2).sum())

# %% [markdown]
# First, *where* is "who is the subject" at the last position? Patch the whole residual stream there
# (ordinary activation patching, `V = I`) before each layer:

# %%
whole = torch.eye(ioi.cfg.d_model)
scan = {layer: effect_at(f"blocks.{layer}.hook_resid_pre", whole, sets["train"]) for layer in range(1, ioi.cfg.n_layers)}
print({f"blocks.{layer}.hook_resid_pre": round(e, 2) for layer, e in scan.items()})
assert max(scan.values()) > 0.8, "no layer's last position carries the subject here; try pos= the S2 position"
layer = min(l for l, e in scan.items() if e > 0.8)
site = f"blocks.{layer}.hook_resid_pre"
print("site:", site)

# %% [markdown]
# We take the earliest layer where the whole last position carries most of the effect (the scan
# above): the toy's S-inhibition head has moved the subject's identity there, and the name movers
# read it. We train two `k = 8` subspaces at that site: a
# *narrow* one on a single name pair and frame (what this notebook used to do), and a *broad* one on
# all training names and frames. The variable is *which name* is the subject, so one direction is not
# enough (exercise 1).

# %%
k = 8
narrow = train_das(ioi, sets["one pair, one frame"].base, sets["one pair, one frame"].source, site,
                   sets["one pair, one frame"].metric, k=k, steps=150, lr=0.05, seed=0, progress=False)
broad = train_das(ioi, sets["train"].base, sets["train"].source, site, sets["train"].metric,
                  k=k, steps=150, lr=0.05, seed=0, progress=False)
table = pd.DataFrame({name: {"narrow DAS": effect_at(site, narrow.basis, p), "broad DAS": effect_at(site, broad.basis, p),
                             "whole site": effect_at(site, whole, p)} for name, p in sets.items()})
print(table.round(2).to_string())

# %%
row = table.loc
assert row["narrow DAS", "one pair, one frame"] > 0.9
assert all(row["narrow DAS", name] < 0.45 for name in sets if name != "one pair, one frame")
assert row["broad DAS", "train"] > 0.8 and row["broad DAS", "held-out frames"] > 0.7
assert 0.35 < row["broad DAS", "held-out names"] < row["whole site", "held-out names"] - 0.2
assert 0.35 < row["broad DAS", "held-out both"] < row["whole site", "held-out both"] - 0.2
assert all(row["whole site", name] > 0.85 for name in sets)

# %% [markdown]
# Read the table by rows:
#
# * **narrow DAS** reproduces the source on its own pair and little anywhere else (well under half
#   of the effect): it learned where *Mary vs John* sits, not where the subject sits;
# * **broad DAS** transfers most of the effect on the training set and keeps most of it on held-out
#   frames: the subspace does not depend on the sentence frame. On held-out names it keeps only part
#   (well below the whole site): the variable is a *name*, and an 8-dimensional subspace fitted on
#   the training names covers the directions of unseen names only partly;
# * the **whole site** moves (nearly) everything on every set: the information is there for every
#   name; it is the learned subspace that does not generalise fully.
#
# ## Auditing the broad subspace
#
# Who reads the site? The name-mover heads of that layer, whose queries at the last position decide
# which name they copy. The rowspace test needs a reader of lower rank than the site (all heads'
# queries together span the whole residual stream), so we audit against the top name mover: the head
# that attends most from the last position to the answer. We audit the broad subspace on the
# held-out set with `reader=` its query weights `W_Q`, passing each prompt's own pair of names to the
# flow check (`logit_tokens` takes one id per prompt).

# %%
held = sets["held-out both"]
_, cache = ioi.run_with_cache(held.base, names_filter=[f"blocks.{layer}.attn.hook_pattern"])
io_pos = (held.base == held.answer[:, None]).int().argmax(1)       # the answer's (first) position
to_io = cache[f"blocks.{layer}.attn.hook_pattern"][torch.arange(len(io_pos)), :, -1, io_pos].mean(0)
mover = int(to_io.argmax())
print(f"attention from the last position to the answer, layer {layer}:", [round(float(a), 2) for a in to_io])
assert to_io[mover] > 0.4
report = illusion_report(ioi, held.base, held.source, site, broad.basis, held.metric,
                         reader=ioi.W_Q[layer, mover], logit_tokens=(held.answer, held.other))
print(f"name mover L{layer}H{mover}; verdict: {report.verdict}")
print(f"E(V) = {report.effect_v:.2f}, E(whole site) = {report.effect_full:.2f}, row part {report.effect_row:.2f}, "
      f"null part {report.effect_null:.2f}: sigma = {report.sigma:.2f}, epsilon = {report.epsilon:.2f}")
f = report.flow
print(f"flow check: subspace credit {f.subspace_credit:.2f}, complement {f.complement_credit:.2f}, "
      f"R = {f.cancellation_ratio:.2f} (mean logit difference {report.metric_base:.1f})")
assert report.verdict == "faithful" and not report.rowspace_uninformative
assert report.sigma < report.thresholds.sigma_frac * report.effect_v and report.epsilon < 0
assert report.effect_row > 0.05 and report.effect_null > 0.05
assert f.cancellation_ratio < report.thresholds.cancellation_min
assert max(abs(f.subspace_credit), abs(f.complement_credit)) < 0.1 * report.metric_base
narrow_held = illusion_report(ioi, held.base, held.source, site, narrow.basis, held.metric,
                              reader=ioi.W_Q[layer, mover], logit_tokens=(held.answer, held.other))
print("narrow DAS on the held-out set:", narrow_held.verdict)
assert narrow_held.verdict == "inconclusive"

# %% [markdown]
# The broad subspace passes the audit, for reasons we can read off:
#
# * no superadditivity (σ well below its threshold): the part of `V` that the top name mover's query
#   reads and the part it does not each carry some of the effect, and together no more than their sum
#   (the other part acts through the other heads' queries); in part 1's `v_ill` the parts did nothing
#   alone and everything together;
# * the subspace does *less* than the whole site (ε < 0), as a genuine part of the site should;
# * the flow check finds no cancellation, but look at the credits: both are tiny next to the logit
#   difference. This site acts on the answer through the name mover's *query*, that is through an
#   attention pattern, and DePass freezes attention patterns: the direct credit it measures is not where
#   the effect is. Here the flow check is blind, and the verdict rests on the patch signature (notebook
#   03 meets the same limit with the S-inhibition heads).
#
# The narrow subspace, audited on the held-out set, is *inconclusive*: its effect there is too small to
# explain. The report audits whether an effect is carried by what the model reads; whether a subspace
# *generalises* is a separate question, answered only by held-out names and frames. The verdict
# `illusion_suspected` needs a site with room for it: part 1's dormant MLP unit, or a wide MLP hidden
# layer (the `facts` toy has one; exercise 3).
#
# ## What to try next
#
# 1. Train the broad subspace with `k = 1, 2, 4, 16` and plot the held-out effects against `k`: how
#    many dimensions does "which name is the subject" need, and where does the gap to the whole site
#    close?
# 2. Hold out names by another rule (e.g. `data.IOI_NAMES[::4]`) or add the held-out names to the
#    training set: is the gap on held-out names about *which* names, or about how many?
# 3. Train DAS at `blocks.0.mlp.hook_post` of the `facts` toy (`toy.load("facts")`) on two subjects
#    and audit it: does a wide MLP hidden layer give the illusion room?
# 4. Use `subspace_patch_setter` with `transformer_lens.patching.generic_activation_patch` to patch
#    the broad subspace position by position.
# 5. In part 1, sweep `v = cos θ e1 + sin θ e2` and plot the effect against θ (it is `sin 2θ`).
#
# **Next:** 05 (DecompX on a BERT classifier).
