//! Helpers for the end-to-end tests: starting the real binaries and waiting on their output.
