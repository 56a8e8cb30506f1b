//! `simulate`, validated: the address to listen on and the simulator's flags.

use std::net::SocketAddr;

use crate::cli::SimulateArgs;

/// `simulate`: the address to listen on and the simulator's flags as given. Nothing here
/// needs checking before the simulator starts: `app::simulate` turns the flags into the
/// simulator's configuration, which checks its fault fractions and key file itself.
#[derive(Debug, Clone)]
pub struct SimulateSettings {
    pub addr: SocketAddr,
    pub flags: SimulateArgs,
}

pub(super) fn simulate_settings(args: &SimulateArgs) -> SimulateSettings {
    SimulateSettings {
        addr: SocketAddr::new(args.bind, args.port),
        flags: args.clone(),
    }
}
