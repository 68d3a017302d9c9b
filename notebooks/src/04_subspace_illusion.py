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
# * how to train a direction with DAS (`train_das`) on a toy model and audit it.
#
# Part 1 is a hand-built 3-neuron example where every number can be checked by hand; part 2 trains a
# direction on the `ioi` toy.

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
# ## Part 2 · A direction learned by DAS on the IOI toy
#
# Distributed alignment search (DAS) learns a unit vector `v` at a site so that patching along `v`
# makes the base run behave like the source run. We use
#
# * base prompts *"When Mary and John went to the P, John gave a O to"* (answer Mary),
# * source prompts with the roles swapped, *"When John and Mary …, Mary gave …"* (answer John),
# * the metric `logit(Mary) − logit(John)` per prompt, and
# * the site `blocks.0.mlp.hook_post` (layer 0's 256 MLP neurons) at the last position.
#
# The MLP hidden layer is 4 times wider than the residual stream, so `W_out` has a large nullspace:
# plenty of room for an illusion. We train on 16 pairs and audit on 16 held-out pairs.

# %%
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
assert das.losses[-1] < 0.1 * das.losses[0]

# %%
report = illusion_report(ioi, base_ioi[test], source_ioi[test], site, das.basis, metric, logit_tokens=(mary, john))
print(report)

# %%
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
assert report.verdict == "illusion_suspected"

# %% [markdown]
# Read the numbers above in order:
#
# 1. The learned direction transfers much of the base→source change on pairs it was not trained on:
#    it looks like "the variable that decides the answer".
# 2. Patching the *whole* MLP hidden layer at that position does far less: a 1-D slice of a site doing
#    more than the site itself is the first warning sign, since the site is not a bottleneck.
# 3. The part of `v` that the rest of the model can read (its `W_out` rowspace part) keeps only a
#    fraction of the effect and the nullspace part does nothing alone: the effect needs both, the
#    *superadditivity* of the distilled example.
# 4. The flow check replays the subspace part and the complement of the site through the model with
#    DePass. The subspace's credit runs mostly through active neurons here (Φ is small, unlike in the
#    distilled example), but it and the complement's credit largely cancel (R is above its threshold):
#    along `v` the model normally writes something that the rest of the site offsets, and the patch
#    breaks that balance.
#
# The verdict is *illusion suspected*: the direction is a property of the patch, not evidence that the
# model stores the IO/S order along it. (Thresholds are in `depass_tl.subspace_patching.Thresholds`.)
#
# ## Exercises
#
# 1. Train DAS at a residual-stream site, e.g. `blocks.2.hook_resid_pre`, and audit it with
#    `reader=` set to the query weights of the head found in notebook 03
#    (`ioi.W_Q[2, h]`); does the verdict change?
# 2. Use `subspace_patch_setter` with `transformer_lens.patching.generic_activation_patch` to patch the
#    DAS direction layer by layer.
# 3. In part 1, sweep `v = cos θ e1 + sin θ e2` and plot the effect against θ (it is `sin 2θ`).
#
# **Next:** 05 (DecompX on a BERT classifier).
