"""A tour of the Python API on the embedded Mamba-2 model (runs offline in about a minute).

    python examples/quickstart.py
"""

import torch

from ssm_profile import DataSpec, ProfileSettings, analyze, load_model, profile_model

torch.set_num_threads(1)

loaded = load_model("tiny-mamba2")

# 1. Static analysis: no data needed.
analysis = analyze(loaded.model, name="tiny-mamba2")
print(f"{analysis.totals.parameters:,} parameters, {analysis.totals.ssm_share:.0%} in SSM mixers")
for row in analysis.summary_by_group()[:6]:
    print(f"  {row['group']:<12} {row['numel']:>9,} params  {row['share']:6.1%}")

# 2. Saliency and measured sensitivity on a small budget.
result = profile_model(
    loaded,
    DataSpec(nsamples=8, eval_samples=8, seqlen=128),
    ProfileSettings(criteria=["magnitude", "wanda", "fisher", "random"], sparsities=[0.25, 0.5, 0.75]),
    run_dir="runs/quickstart-tiny-mamba2",
)
print(f"dense perplexity {result.dense_perplexity:.2f}")
for row in result.ranking():
    print(f"  #{row.rank} {row.target:<18} best={row.best_criterion:<10} safe up to {row.max_safe_sparsity:.0%}")
for finding in result.findings():
    print(f"  [{finding.verdict}] {finding.claim}")
