//! The integration suite, one binary: each module is a feature, `helpers` starts the
//! simulator, fresh databases and the real binary for them.

mod batch;
mod faults;
mod front_door;
mod helpers;
mod operations;
mod payple;
mod reports;
mod signals;
mod simulator;
