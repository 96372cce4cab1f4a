"""Training CRoPD: run files (`run_config`), the two-stage loop (`train`), and what a run leaves beside its
checkpoint (`report`: metrics, plot, model card)."""
