//! The integration suite, one binary: each module is a feature, `helpers` starts the
//! simulator, fresh databases and the real binary for them.

mod helpers;
mod simulator;
mod payple;
mod batch;
mod signals;
mod reports;
mod operations;
mod faults;
