"""Model backends behind one interface (:mod:`serve.backends.base`): transformers (CPU) and vLLM (GPU)."""
