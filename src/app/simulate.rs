//! `simulate`: serve the Payple simulator on loopback until SIGINT or SIGTERM.

use super::error::AppError;
use super::error::SimulatorRole;
use crate::exit::ExitStatus;
use crate::settings::SimulateSettings;
use crate::shutdown::Shutdown;
use crate::simulator;

pub(super) async fn simulate(
    settings: SimulateSettings,
    shutdown: &Shutdown,
) -> Result<ExitStatus, AppError> {
    simulator::serve(
        settings.config,
        settings.addr,
        shutdown.stop.clone().cancelled_owned(),
    )
    .await
    .map_err(AppError::simulator(SimulatorRole::Served))?;
    Ok(ExitStatus::Success)
}
