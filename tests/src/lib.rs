//! Helpers shared by the host and guest tests.
