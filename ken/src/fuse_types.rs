//! The FUSE words of the handler API: a group's id and why [`crate::Turn::fuse_create`]
//! refused a group.
//!
//! A leaf: the handler (`handler.rs`) and the engine's FUSE machine (`engine/fuse/`) both
//! import it and it imports neither, so the handler API does not depend on the machine.
//! Re-exported as `ken::GroupId`, `ken::FuseError` and under `ken::engine::fuse`.

use ken_transport::ProcessId;
use serde::{Deserialize, Serialize};

/// A FUSE group: 128 random bits chosen by its creator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupId(pub [u8; 16]);

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("g-")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// Why [`crate::Turn::fuse_create`] refused a group. Nothing was created.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FuseError {
    #[error("member `{0}` is not in this process's address book")]
    UnknownMember(ProcessId),
    #[error("a group has at most {max} members, got {got}")]
    TooManyMembers { got: usize, max: usize },
}
