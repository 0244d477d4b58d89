"""Photo -> FLAME codes: DECA and EMOCA encoders (official checkpoints), weight-free fitting,
the detail model, and training."""
