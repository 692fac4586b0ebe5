//! Hand-written kernels (none yet).
