//! The example apps wired into the simulation, with their invariants.

use std::time::Duration;

use ken::ProcessId;
use ken_apps::bank::{self, Bank, BankView};
use ken_apps::pingpong::{self, PingPong};

use crate::sim::{SimApp, World};

/// Bank members `bank-0 .. bank-{n-1}`, each starting `transfers` transfers.
#[derive(Debug, Clone)]
pub struct BankSim {
    pub members: usize,
    pub accounts: u32,
    pub initial_balance: i64,
    pub transfers: u64,
    /// Milliseconds between two transfers started by one member.
    pub transfer_interval_ms: u64,
}

impl BankSim {
    fn views(&self, world: &World) -> Result<Vec<BankView>, String> {
        let mut views = Vec::new();
        for id in self.ids() {
            let mut view = BankView {
                id: id.to_string(),
                ..BankView::default()
            };
            if let Some(node) = world.nodes.get(id.as_str()) {
                if let Some(root) = &node.root {
                    // Either schema version (a mixed-version run): version 1's root is a
                    // strict prefix of version 2's and the codec refuses trailing bytes, so
                    // exactly one of the two decodes.
                    view.state = match ken::store::codec::decode::<bank::State>(root) {
                        Ok(s) => s,
                        Err(_) => ken::store::codec::decode::<bank::StateV2>(root)
                            .map_err(|e| e.to_string())?
                            .v1(),
                    };
                }
                for (table, rows) in &node.tables {
                    for (k, v) in rows {
                        view.apply_write(table, k, Some(v))?;
                    }
                }
            }
            views.push(view);
        }
        Ok(views)
    }
}

impl BankSim {
    /// The schema-2 handler of member `id` (the rolling upgrade's target).
    pub fn handler_v2(&self, id: &ProcessId) -> bank::BankV2 {
        bank::BankV2(self.handler(id))
    }

    /// The members' committed bank data in `world` (either schema version).
    pub fn world_views(&self, world: &World) -> Result<Vec<BankView>, String> {
        self.views(world)
    }
}

impl SimApp for BankSim {
    type H = Bank;

    fn ids(&self) -> Vec<ProcessId> {
        (0..self.members)
            .map(|i| ProcessId::new(format!("bank-{i}")).expect("valid id"))
            .collect()
    }

    fn handler(&self, id: &ProcessId) -> Bank {
        Bank {
            id: id.clone(),
            members: self.ids(),
            accounts: self.accounts,
            initial_balance: self.initial_balance,
            transfer_interval: Duration::from_millis(self.transfer_interval_ms),
            transfers_max: self.transfers,
            outbox_limit: 64,
            panic_every: 0,
        }
    }

    fn check(&self, world: &World, at_end: bool) -> Vec<String> {
        let views = match self.views(world) {
            Ok(v) => v,
            Err(e) => return vec![format!("undecodable committed bank state: {e}")],
        };
        // Before every member ran its first (account-opening) turn, the total is partial.
        let opened = views
            .iter()
            .all(|v| v.balances.len() == self.accounts as usize);
        if !opened {
            return Vec::new();
        }
        let mut violations = bank::audit(&views, self.accounts, self.initial_balance);
        if at_end {
            for v in &views {
                if v.state.transfers_started != self.transfers {
                    violations.push(format!(
                        "{}: started {} transfers, expected {}",
                        v.id, v.state.transfers_started, self.transfers
                    ));
                }
            }
            let sent: usize = views.iter().map(|v| v.sent.len()).sum();
            let applied: usize = views.iter().map(|v| v.applied.len()).sum();
            if sent != applied {
                violations.push(format!(
                    "{sent} transfers sent but {applied} applied after quiescence"
                ));
            }
        }
        violations
    }

    fn done(&self, world: &World) -> bool {
        match self.views(world) {
            Ok(views) => {
                let sent: usize = views.iter().map(|v| v.sent.len()).sum();
                let applied: usize = views.iter().map(|v| v.applied.len()).sum();
                views.len() == self.members
                    && views
                        .iter()
                        .all(|v| v.state.transfers_started == self.transfers)
                    && sent == applied
            }
            Err(_) => false,
        }
    }
}

/// Two pingpong players volleying to `count`.
#[derive(Debug, Clone)]
pub struct PingPongSim {
    pub count: u64,
}

impl PingPongSim {
    fn state(world: &World, id: &str) -> Option<pingpong::State> {
        let root = world.nodes.get(id)?.root.as_ref()?;
        ken::store::codec::decode(root).ok()
    }
}

impl SimApp for PingPongSim {
    type H = PingPong;

    fn ids(&self) -> Vec<ProcessId> {
        vec![
            ProcessId::new("a").expect("valid id"),
            ProcessId::new("b").expect("valid id"),
        ]
    }

    fn handler(&self, id: &ProcessId) -> PingPong {
        let other = if id.as_str() == "a" { "b" } else { "a" };
        PingPong {
            id: id.clone(),
            peer: ProcessId::new(other).expect("valid id"),
            count: self.count,
            serve: id.as_str() == "b",
        }
    }

    fn check(&self, world: &World, at_end: bool) -> Vec<String> {
        let mut violations = Vec::new();
        for id in ["a", "b"] {
            let Some(s) = Self::state(world, id) else {
                if at_end {
                    violations.push(format!("{id}: no committed state"));
                }
                continue;
            };
            if s.gaps != 0 || s.repeats != 0 {
                violations.push(format!("{id}: {} gaps, {} repeats", s.gaps, s.repeats));
            }
            if at_end && s.received != self.count / 2 {
                violations.push(format!(
                    "{id}: received {}, expected {}",
                    s.received,
                    self.count / 2
                ));
            }
        }
        if at_end {
            for id in ["a", "b"] {
                let finished = world.nodes.get(id).and_then(|n| n.finished.clone());
                if finished.is_none() {
                    violations.push(format!("{id}: never reported finished"));
                }
            }
        }
        violations
    }

    fn done(&self, world: &World) -> bool {
        ["a", "b"].iter().all(|id| {
            Self::state(world, id).is_some_and(|s| s.last_received.max(s.last_sent) >= self.count)
                && world.nodes.get(*id).is_some_and(|n| n.finished.is_some())
        })
    }
}
