//! The `alp` binary's library: the command line, the all-in-one suite and the demo course.
//! Tests start the suite through [`suite::run`], the same code `alp dev` runs.

pub mod cli;
pub mod seed;
pub mod suite;
