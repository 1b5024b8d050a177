//! Room fan-out (being written).

use std::sync::Arc;

use collab_bus::Bus;

use crate::config::GatewayConfig;
use crate::metrics::GatewayMetrics;

pub(crate) struct Hub {
    _bus: Arc<dyn Bus>,
}

impl Hub {
    pub fn new(bus: Arc<dyn Bus>, _config: GatewayConfig, _metrics: GatewayMetrics) -> Self {
        Hub { _bus: bus }
    }
}
