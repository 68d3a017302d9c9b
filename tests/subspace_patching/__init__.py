"""Tests of depass_tl.subspace."""
