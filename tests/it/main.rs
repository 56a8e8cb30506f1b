//! The integration suite, one binary: each module is a feature, `helpers` starts the
//! simulator, fresh databases and the real binary for them.

mod batch;
mod budget;
mod docs;
mod events;
mod faults;
mod front_door;
mod helpers;
mod layout;
mod notify;
mod notify_failures;
mod operations;
mod outage;
mod outputs;
mod payple;
#[path = "../support/peak_rss.rs"]
mod peak_rss;
mod recheck;
mod reports;
mod safety;
mod sandbox;
mod signals;
mod simulator;
mod store_bulk;
mod upgrade;
mod workbook;
