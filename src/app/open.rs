//! What a subcommand opens before it works: the Payple client (the built-in simulator
//! first, for `--simulator`) and the results database for reading.

use std::net::{Ipv4Addr, SocketAddr};

use secrecy::ExposeSecret;

use super::error::{AppError, SimulatorRole};
use crate::domain::mask_payer_id;
use crate::exit::ExitStatus;
use crate::payple::{ClientConfig, PaypleClient};
use crate::report::ReportError;
use crate::report::select::open_store;
use crate::settings::{PaypleSettings, PaypleTarget};
use crate::simulator::{self, Partner, SimConfig, SimHandle};
use crate::store::Store;

/// The Payple client the settings ask for. For `--simulator` the built-in simulator is
/// started first and the client configuration completed with its URL; keep the handle
/// alive as long as the client is used.
pub(super) async fn payple_client(
    payple: &PaypleSettings,
) -> Result<(PaypleClient, Option<SimHandle>), AppError> {
    let (config, sim) = match &payple.target {
        PaypleTarget::Origin(_) => (payple.client.clone(), None),
        PaypleTarget::Simulator => {
            let sim = start_simulator(&payple.client).await?;
            let url = sim.url();
            let origin =
                url::Url::parse(&url).map_err(|source| AppError::SimulatorUrl { url, source })?;
            (payple.client.clone().with_origin(origin), Some(sim))
        }
    };
    let client = PaypleClient::new(config).map_err(AppError::building)?;
    Ok((client, sim))
}

/// Starts the in-process simulator for `--simulator` on an ephemeral loopback port,
/// accepting the partner id, custKey and Referer the job is configured with (the test
/// partner's unless the environment names another).
async fn start_simulator(client: &ClientConfig) -> Result<SimHandle, AppError> {
    let partner = Partner {
        cst_id: client.cst_id.expose_secret().to_owned(),
        cust_key: client.cust_key.expose_secret().to_owned(),
        referer: client.referer.clone(),
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    let handle = simulator::start(SimConfig::accepting(partner), addr)
        .await
        .map_err(AppError::simulator(SimulatorRole::BuiltIn))?;
    tracing::info!(url = %handle.url(), "built-in Payple simulator started");
    tracing::info!(
        partner = %mask_payer_id(client.cst_id.expose_secret()),
        referer = %client.referer,
        "built-in simulator accepts the configured partner"
    );
    Ok(handle)
}

/// Opens the results database for reading (never creating a SQLite file), runs `work`,
/// and closes it whatever `work` returned.
pub(super) async fn with_store(
    url: &str,
    work: impl AsyncFnOnce(&Store) -> Result<(), ReportError>,
) -> Result<ExitStatus, AppError> {
    let store = open_store(url).await?;
    let result = work(&store).await;
    store.close().await;
    result?;
    Ok(ExitStatus::Success)
}
