"""Pure tensor replay of a frozen run over additive components (no hooks, no model object)."""
