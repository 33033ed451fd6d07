//! Example Ken services. Each app is a pure handler library plus a thin binary.
