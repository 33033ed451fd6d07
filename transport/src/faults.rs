//! Seeded fault injection (implemented by the transport work).

/// Fault probabilities and switches.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultConfig {
    pub seed: u64,
}
