//! A service's router on this node: its handlers started over its
//! namespace and budget, with the grants the catalogue gives it, composed
//! for the ingress. At start (`start`) and when a running node starts a
//! service (`grow`).

use std::sync::Arc;

use crate::{
    auth::Auth,
    catalogue::{Capability, Grants, ServiceContext, Services},
    config::Config,
    edge::ingress,
    store::Store,
};

/// Starts the handlers of service `name` (migrated already) and composes
/// its router: at start, or when a running node starts it.
pub(super) fn service_router(
    catalogue: &Services,
    name: &'static str,
    node_id: &Arc<str>,
    store: &Store,
    config: &Config,
    auth: &Arc<Auth>,
) -> Result<axum::Router, crate::catalogue::StartError> {
    let service = catalogue
        .get(name)
        .expect("selection is validated against the catalogue");
    let grants = Grants {
        credentials: catalogue
            .granted(name)
            .contains(&Capability::IssueCredentials)
            .then(|| auth.clone()),
    };
    let handlers = service.start_handlers(ServiceContext::new(
        node_id.clone(),
        store,
        name,
        config.limits.budget(name),
        grants,
    ))?;
    Ok(ingress::compose(name, handlers))
}
