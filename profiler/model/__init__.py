"""Model: what the user typed turned into a loaded model, and what its SSM layers are.

``resolve`` loads (embedded, local, mamba-ssm format via ``convert``, hub); ``arch`` finds the mixers
and how their tensors couple; ``stock`` says what each architecture's config can express after a
cut; ``analysis`` is the static anatomy read from weights alone.
"""

from __future__ import annotations

from ..base.face import lazy_face

__all__, __getattr__ = lazy_face(__name__, {
    ".resolve": ("LoadedModel", "ModelSource", "load_model", "load_skeleton", "locate", "list_models", "ALIASES",
                 "DTYPES", "EMBEDDED_MODELS", "check_device", "check_vocabulary", "embedded_data", "embedding_rows",
                 "is_safetensors_error", "model_input", "tokenizer_info", "use_tokenizer", "weights_fingerprint"),
    ".arch": ("MixerInfo", "UnitFamily", "find_mixers", "kind_of", "MAMBA1", "MAMBA2", "GATED_DELTA", "KDA"),
    ".analysis": ("AnalysisResult", "AnalysisTotals", "GroupRow", "LayerDynamics", "UnitRow",
                  "WeightStats", "analyze", "group_flops", "group_state_bytes", "unique_parameters"),
    ".fits": ("least_parameters",),
    ".norms": ("sliced_norm_eps", "stock_width_problems"),
    ".stock": ("stock_arch",),
})
