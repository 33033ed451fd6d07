//! The Ken runtime: handler API, sans-I/O engine, and the tokio driver.
