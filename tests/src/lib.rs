//! Cross-crate tests for Ken: the deterministic simulation and real-process kill-and-restart runs live in `tests/`.
