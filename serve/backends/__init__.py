"""Model backends behind one interface (:mod:`serve.backends.base`): transformers here; vLLM is a separate issue."""
