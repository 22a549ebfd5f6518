"""Model: what the user typed turned into a loaded model, and what its SSM layers are.

``resolve`` loads (embedded, local, mamba-ssm format via ``convert``, hub); ``arch`` finds the mixers
and how their tensors couple; ``stock`` says what each architecture's config can express after a
cut; ``analysis`` is the static anatomy read from weights alone.
"""
