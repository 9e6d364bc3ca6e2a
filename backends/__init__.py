"""The engines, one package per modality: plain Python over PyTorch and transformers.

They never import Triton (`triton_python_backend_utils`) nor the glue in `serving/`, so they run
and are tested in-process. Each modality's settings live in its `settings` module, and every
engine a model serves loads the same way: `load(plan: shared.loading.LoadPlan)`.
"""
