//! STUB (lead's branch only, replaced by the helper's module at merge).
use std::path::PathBuf;
use ken_store::Batch;
use ken_transport::{ClusterKey, ProcessId};

pub struct ShipperConfig {
    pub process: ProcessId,
    pub store: PathBuf,
    pub standby: String,
    pub key: Option<ClusterKey>,
}
pub struct ShipperHandle(tokio::sync::mpsc::UnboundedSender<(u64, Batch)>);
impl ShipperHandle {
    pub fn ship(&self, commit_no: u64, batch: Batch) {
        let _ = self.0.send((commit_no, batch));
    }
}
#[derive(Debug)]
pub enum ShipEvent {
    Acked(u64),
    Fenced { standby_epoch: u64, ours: u64 },
    Disconnected(String),
}
pub fn start(
    _cfg: ShipperConfig,
) -> (ShipperHandle, tokio::sync::mpsc::UnboundedReceiver<ShipEvent>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(u64, Batch)>();
    let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let _ = etx.send(ShipEvent::Acked(u64::MAX / 2));
        while let Some((n, _)) = rx.recv().await {
            let _ = etx.send(ShipEvent::Acked(n));
        }
    });
    (ShipperHandle(tx), erx)
}
pub struct StandbyConfig {
    pub process: ProcessId,
    pub store: PathBuf,
    pub listener: tokio::net::TcpListener,
    pub key: Option<ClusterKey>,
    pub min_epoch: u64,
}
pub async fn serve(_c: StandbyConfig) -> Result<(), String> {
    Ok(())
}
pub fn promote(_p: &std::path::Path) -> Result<u64, String> {
    Ok(1)
}
