//! Helpers shared by the host and guest tests.

pub mod agent;
pub mod cli;
pub mod driver;
pub mod faults;
pub mod paths;
pub mod recorder;
pub mod scenarios;
pub mod selftests;
pub mod stress;
pub mod workload;
