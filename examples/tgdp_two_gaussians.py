# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # TGDP on the two-Gaussian simulation
#
# Transfer-guided diffusion (Ouyang et al. 2024) on the paper's simulation (`theory.truth.tasks.TwoGaussianTask`):
#
#     source p = 1/2 N(mu_S, 0.1 I) + 1/2 N(-mu_S, 0.1 I),  mu_S = (0.5,  0.5),  10,000 samples
#     target q = 1/2 N(mu_T, 0.1 I) + 1/2 N(-mu_T, 0.1 I),  mu_T = (0.5, -0.5),  100 samples
#
# Under one forward (noising) process the target score is the source score plus a guidance term:
#
#     grad log q_t(x) = grad log p_t(x) + grad log h_t(x),   h_t(x) = q_t(x) / p_t(x) = E_p[ w(x_0) | x_t = x ]
#
# with w = q / p. TGDP keeps the source diffusion model frozen and learns only h (`diffusion.tgdp.fit_tgdp`):
# a domain classifier gives w at every source sample, and a guidance network h_psi(x_t, t) is regressed onto w on
# noised SOURCE samples. Everything here is analytic, so the learned log h_t can be held against the exact one.
#
# Here the source model is a LEARNED `DiffusionHead` (denoising score matching on the 10,000 source samples),
# as in the paper. To fit a live demo's time budget, the guidance network is trained for 3,000 steps without
# the Rao-Blackwellised target (`rao_blackwell=False`, much cheaper per step) but WITH the paper's consistency
# regulariser (`eta_consistency=1`: denoising score matching of the composed score on the target samples, the
# source network frozen). Without it, at this budget, the guidance is too rough where the source has little
# mass (measured: MMD^2 of the samples 0.036 without, 0.002 with; see the README).
#
# `GENTRANSFER_DEMO_FAST=1` shrinks every step count (numbers then meaningless); `GENTRANSFER_DEMO_OUT` sets the
# output folder (default `examples/output/`).

# %%
import os
import time
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch

from diffusion import DiffusionHead, VPSchedule, probability_flow_log_prob, sample_ode
from diffusion.tgdp import (
    FunctionGuidance,
    GuidedScore,
    KernelGuidance,
    TGDPConfig,
    fit_quadratic_log_ratio,
    fit_tgdp,
    select_switch,
    train_head,
)
from shared_embed import TrainConfig
from shared_embed.progress import env_flag
from theory.truth.kl import monte_carlo_kl
from theory.truth.metrics import mmd2
from theory.truth.tasks import TwoGaussianTask

FAST = env_flag("GENTRANSFER_DEMO_FAST")
HERE = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
OUT = Path(os.environ.get("GENTRANSFER_DEMO_OUT") or HERE / "output")
OUT.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)
START = time.perf_counter()

N_S, N_T = (2000, 100) if FAST else (10_000, 100)
SOURCE_STEPS = 50 if FAST else 1500
CLASSIFIER_STEPS = 50 if FAST else 1500
GUIDANCE_STEPS = 50 if FAST else 3000
N_SAMPLES = 300 if FAST else 1000  # draws per model for the pictures and the MMD
N_KL = 100 if FAST else 500  # target draws for the probability-flow KL
TOL = dict(rtol=1e-3, atol=1e-3) if FAST else dict(rtol=1e-4, atol=1e-4)  # adaptive ODE solver tolerances
print(f"mode: {'FAST (tiny steps, numbers meaningless)' if FAST else 'full'}; n_s = {N_S}, n_t = {N_T}")

# %% [markdown]
# ## Data

# %%
task = TwoGaussianTask()  # mu_S = (0.5, 0.5), mu_T = (0.5, -0.5), variance 0.1, d = 2
schedule = VPSchedule()  # linear beta from 0.1 to 20
gen = torch.Generator().manual_seed(0)
source_x = task.sample(N_S, "source", gen).x  # the labels (c) are not used: unconditional TGDP
target_x = task.sample(N_T, "target", gen).x
source_val = task.sample(N_S // 5, "source", gen).x  # held out, for early stopping of the source model

# %% [markdown]
# ## The frozen source model: a diffusion head trained on the 10,000 source samples
# `train_head` runs the library's training loop on the head's denoising-score-matching loss.

# %%
source_head = DiffusionHead(2, None, width=64, blocks=2, **TOL)
history = train_head(
    source_head,
    source_x,
    config=TrainConfig(steps=SOURCE_STEPS, lr=2e-3, eval_every=100, patience=5, description="source"),
    val_x=source_val,
)
source_head.requires_grad_(False).eval()
print(f"source diffusion head: {history.steps_done} steps, {history.seconds:.1f} s")

# %% [markdown]
# ## TGDP: classifier -> density ratio w -> guidance h_psi(x_t, t)
# Loss of the guidance: L_guide (source samples) + eta_consistency * L_cons (target samples).
# `fit_tgdp` takes the frozen source score as a plain function and returns the composed target score
# `s_src + grad log h_psi` (a `GuidedScore`) together with its pieces.

# %%
config = TGDPConfig(
    classifier_train=TrainConfig(
        steps=CLASSIFIER_STEPS, lr=1e-3, optimizer="adamw", weight_decay=1e-4, description="domain classifier"
    ),
    rao_blackwell=False,  # regress onto w(x_0) itself: cheaper steps than the posterior-mean target
    eta_consistency=1.0,  # + DSM of s_src + grad log h_psi on the target samples
    guidance_train=TrainConfig(steps=GUIDANCE_STEPS, lr=3e-3, description="guidance"),
)
tgdp = fit_tgdp(source_head.score, source_x, target_x, schedule=schedule, config=config)
print("TGDP fit: " + ", ".join(f"{k} {h.steps_done} steps {h.seconds:.1f} s" for k, h in tgdp.histories.items()))

# %% [markdown]
# ## The network-free guidance: a cross-validated quadratic ratio and the kernel estimate of E[w | x_t]
# `fit_quadratic_log_ratio`: logistic regression on quadratic features, its L2 strength chosen by 5-fold
# cross-validation, log w = x^T A x + b^T x + c + log(n_s / n_t) (the class-prior factor explicit).
# `KernelGuidance`: h_t(x) = E[w(x_0) | x_t = x] under a kernel density estimate of the source rows, the
# Gaussian integrals of w done in closed form (so h_0 = w exactly, even where source rows are sparse).
# Nothing is trained by gradient descent; the guidance's gradient comes from autograd through the closed form.

# %%
ratio = fit_quadratic_log_ratio(source_x, target_x)
kernel = KernelGuidance(source_x, ratio, schedule, dtype=torch.float32, max_rows=2000)
kernel_score = GuidedScore(source_head.score, kernel)
print(
    f"quadratic ratio: C = {ratio.strength:g}, prior factor n_s / n_t = {ratio.prior_factor:g}; "
    f"kernel bandwidth {kernel.bandwidth:.3f} on {kernel.x.shape[0]} source rows"
)

# %% [markdown]
# ## The baseline: a diffusion model on the target samples alone ("vanilla")
# It is trained on 80 of the 100 target samples; the other 20 are kept to choose the switch time below.

# %%
target_fit, target_held_out = target_x[: N_T * 4 // 5], target_x[N_T * 4 // 5 :]
vanilla = DiffusionHead(2, None, width=64, blocks=2, **TOL)
train_head(vanilla, target_fit, config=TrainConfig(steps=SOURCE_STEPS // 2, lr=2e-3, description="target only"))
vanilla.requires_grad_(False).eval()

# %% [markdown]
# ## Handing over to the target-only score where the guidance is unreliable
# The guidance is least accurate at small t, where the target modes sit in the source's tails. The switch
# (`select_switch`) uses the kernel-guided score for t >= tau and the vanilla score below; tau is chosen on the
# 20 held-out target samples by the denoising score-matching loss with the likelihood weighting (no exact answer
# used; tau = 0 keeps the kernel guidance alone, tau = 1 the vanilla model alone).

# %%
choice = select_switch(kernel_score, vanilla.score, target_held_out, None, schedule)
switched_score = choice.score(kernel_score, vanilla.score)
print(
    f"switch time chosen on the held-out rows: tau = {choice.switch:g} "
    f"(losses: {', '.join(f'{c:g}: {v:.3f}' for c, v in zip(choice.candidates, choice.losses))})"
)

# %% [markdown]
# ## Learned vs exact guidance log h_t
# The exact log h_t = log q_t - log p_t comes from the task. Only grad log h enters the score, so a constant
# offset in log h does not change the model: we report the MSE both raw and with the mean offset removed,
# measured on noised TARGET samples x_t (where the sampler needs the guidance).

# %%
TIMES = (0.05, 0.2, 0.5)
eval_gen = torch.Generator().manual_seed(1)
mse_rows = []
for t in TIMES:
    x0 = task.sample(2000, "target", eval_gen).x
    a, s = schedule.alpha(torch.tensor(t)), schedule.sigma(torch.tensor(t))
    xt = a * x0 + s * torch.randn(x0.shape, generator=eval_gen)
    with torch.no_grad():
        learned = tgdp.guidance.log_h(xt, torch.full((xt.shape[0],), t))
        by_kernel = kernel.log_h(xt, torch.full((xt.shape[0],), t))
    exact = task.log_guidance(xt, a, s)
    diff, kdiff = learned - exact, by_kernel - exact
    mse_rows.append(
        (
            t,
            float(diff.square().mean()),
            float(diff.var()),
            float(exact.var()),
            float(diff.mean()),
            float(kdiff.var()),
            float(kdiff.mean()),
        )
    )
    print(
        f"t = {t:.2f}: MSE log h = {mse_rows[-1][1]:.4f}, MSE up to a constant = {mse_rows[-1][2]:.4f} "
        f"(kernel guidance: {mse_rows[-1][5]:.4f}; variance of the exact log h_t: {mse_rows[-1][3]:.4f})"
    )

# Along the line x = (0.5, u): the target mode (0.5, -0.5) at u = -0.5, the source mode (0.5, 0.5) at u = +0.5.
u = torch.linspace(-1.6, 1.6, 161)
line = torch.stack([torch.full_like(u, 0.5), u], 1)
fig, axes = plt.subplots(1, len(TIMES), figsize=(13, 3.8))
for ax, (t, mse, cmse, _, offset, _, koffset) in zip(axes, mse_rows):
    a, s = schedule.alpha(torch.tensor(t)), schedule.sigma(torch.tensor(t))
    with torch.no_grad():
        learned = tgdp.guidance.log_h(line, torch.full((line.shape[0],), t))
        by_kernel = kernel.log_h(line, torch.full((line.shape[0],), t))
    ax.plot(u, by_kernel - koffset, "-", color="tab:red", lw=1.5, label="kernel guidance (offset removed)")
    ax.plot(u, task.log_guidance(line, a, s), "k-", lw=2, label="exact log h_t")
    ax.plot(u, learned, "-", color="tab:blue", lw=1.5, label="learned log h_psi")
    ax.plot(u, learned - offset, "--", color="tab:blue", lw=1, alpha=0.7, label="learned, mean offset removed")
    ax.axvline(-0.5, color="tab:green", ls=":", lw=1, label="target mode")
    ax.axvline(0.5, color="tab:orange", ls=":", lw=1, label="source mode")
    ax.set_title(f"t = {t:g}  (MSE {mse:.3f}, up to a constant {cmse:.3f})", fontsize=10)
    ax.set_xlabel("u, with x = (0.5, u)")
    ax.grid(alpha=0.3)
axes[0].set_ylabel("log h_t(x) = log q_t(x) / p_t(x)")
axes[0].legend(fontsize=8)
fig.suptitle(f"TGDP guidance: learned vs exact (n_s = {N_S}, n_t = {N_T})", fontsize=12)
fig.tight_layout()
path = OUT / "tgdp_guidance.png"
fig.savefig(path, dpi=110)
print(f"saved {path}")

# %% [markdown]
# ## Samples and scores against the truth
# All models are sampled with the probability-flow ODE from the same noise. Besides the learned TGDP model we
# also show TGDP with the EXACT guidance on the learned source model: what a perfect classifier and guidance
# network would give. Scores: MMD^2 to fresh target draws (Gaussian kernel, median bandwidth) and, for the
# learned models, KL(q || model) through the probability-flow likelihood (exact divergence).

# %%
exact_guided = GuidedScore(
    source_head.score, FunctionGuidance(lambda x, t, c: task.log_guidance(x, schedule.alpha(t), schedule.sigma(t)))
)
scores = {
    "source model as is": source_head.score,
    "target only (vanilla)": vanilla.score,
    "TGDP, learned guidance": tgdp.score,
    "TGDP, kernel guidance": kernel_score,
    "kernel + switch": switched_score,
    "TGDP, exact guidance": exact_guided,
}
x1 = torch.randn(N_SAMPLES, 2, generator=torch.Generator().manual_seed(2))
truth = task.sample(N_SAMPLES, "target", torch.Generator().manual_seed(3)).x
samples, mmds = {}, {}
with torch.no_grad():  # the guided score takes grad log h locally; no graph is kept
    for name, score in scores.items():
        samples[name] = sample_ode(score, x1, schedule, **TOL)
        mmds[name] = mmd2(samples[name], truth)[0]

kl_x = task.sample(N_KL, "target", torch.Generator().manual_seed(4)).x
log_q = task.log_prob(kl_x.double(), "target").double()
kls = {}
for name in (
    "source model as is",
    "target only (vanilla)",
    "TGDP, learned guidance",
    "TGDP, kernel guidance",
    "kernel + switch",
):
    log_model = probability_flow_log_prob(scores[name], kl_x, schedule, divergence="exact", **TOL)
    kls[name] = monte_carlo_kl(log_q, log_model.detach())
for name in scores:
    kl_text = f"KL = {kls[name].value:.4f} +- {kls[name].se:.4f} nats (n={kls[name].n})" if name in kls else ""
    print(f"{name:<24s} MMD^2 = {mmds[name]:.5f}   {kl_text}")

# %%
g1, g2 = np.meshgrid(np.linspace(-1.6, 1.6, 120), np.linspace(-1.6, 1.6, 120))
grid = torch.tensor(np.stack([g1.ravel(), g2.ravel()], 1))
true_density = task.log_prob(grid, "target").exp().reshape(g1.shape).numpy()
source_density = task.log_prob(grid, "source").exp().reshape(g1.shape).numpy()
fig, axes = plt.subplots(1, len(scores), figsize=(3.4 * len(scores), 4.4), sharex=True, sharey=True)
for ax, (name, x) in zip(axes, samples.items()):
    ax.contour(g1, g2, source_density, levels=4, colors="tab:orange", linewidths=0.7, alpha=0.6)
    ax.contour(g1, g2, true_density, levels=4, colors="k", linewidths=0.8)
    ax.scatter(x[:, 0], x[:, 1], s=3, alpha=0.4, color="tab:blue", label="model draws")
    subtitle = f"MMD^2 {mmds[name]:.4f}" + (f", KL {kls[name].value:.2f} nats" if name in kls else "")
    ax.set_title(f"{name}\n{subtitle}", fontsize=10)
    ax.set_xlabel("x[0]")
    ax.set_xlim(-1.8, 1.8)
    ax.set_ylim(-1.8, 1.8)
axes[1].scatter(
    target_fit[:, 0], target_fit[:, 1], s=12, marker="x", color="tab:red", label=f"{target_fit.shape[0]} target samples"
)
axes[0].set_ylabel("x[1]")
axes[0].plot([], [], color="k", lw=0.8, label="target density q")
axes[0].plot([], [], color="tab:orange", lw=0.7, label="source density p")
axes[0].legend(fontsize=8, loc="lower left")
axes[1].legend(fontsize=8, loc="lower left")
fig.suptitle("Samples (probability-flow ODE) against the true target density", fontsize=12)
fig.tight_layout(rect=(0, 0, 1, 0.95))
path = OUT / "tgdp_samples.png"
fig.savefig(path, dpi=110)
print(f"saved {path}")

# %% [markdown]
# ## What to notice
# - The guidance is large and sharp at small t (the domains are well separated there) and flattens to 0 as
#   t -> 1, where both noised laws tend to N(0, I).
# - The learned log h follows the exact one where the source has data; between and beyond the modes, where the
#   source has few samples and the classifier saw only 100 target points, it is rougher.
# - Steering the frozen source model with it moves the mass from the source modes onto the target modes: KL
#   falls from about 2.8 nats (source model as is) to about 0.2, and the samples are nearly as close to the
#   truth as with the EXACT guidance. What is left is the guidance error at small t (first figure).
# - The kernel guidance (red) needs no training: it is exact at t -> 0 for its fitted ratio, and its error is the
#   quadratic ratio's misfit (the true log w is log cosh - log cosh, not quadratic) and the smoothing of the
#   source rows. On the benchmark grid it beats both baselines at n_t = 10 in some seeds but not reliably, and
#   loses at n_t >= 100 (see the TGDP tables in benchmarks/README.md).
# - The switch hands the small-t end over to the vanilla model; tau comes from 20 held-out target samples, not
#   from the truth. Here (one seed, n_t = 100) it picked tau = 0.05 and changed little: KL about 0.10 with or
#   without it. Over 5 seeds on the benchmark grid it removes every loss of the kernel guidance but beats
#   neither baseline on this task: below the switch it is the vanilla model, and above it the kernel-guided
#   score is not better than the vanilla one where it matters.
# - Be honest with the class: on this easy 2-D task, 100 target samples are enough for a diffusion model trained
#   on the target alone, which here does as well or better. TGDP pays off when the target sample is too small
#   or the target law too complex to learn from scratch, and it never retrains the source network.

# %%
print(f"total time: {time.perf_counter() - START:.1f} s")
