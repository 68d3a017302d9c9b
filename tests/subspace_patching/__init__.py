"""Tests of depass_tl.subspace_patching."""
