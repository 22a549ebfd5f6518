"""Recovery: knowledge distillation from the dense teacher (``recover``) and its pieces (``distill``)."""
