//! Integration tests of the `ken` crate (one test binary, per matklad's advice).

mod attacks;
mod client;
mod compose;
mod crash;
mod engine;
mod forget;
mod fuse;
mod fuse_engine;
mod fuse_lifecycle;
mod fuse_machine;
mod hostile;
mod journal_reads;
mod living;
mod observe;
mod replace;
mod reply_cache;
mod resolve;
mod rollback;
mod sans_io;
mod standby;
mod support;
mod tasks;
mod tasks_real;
mod testing;
mod timers;
