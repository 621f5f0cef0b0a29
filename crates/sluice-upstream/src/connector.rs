//! The one HTTPS connector every outbound client of the gateway is built on: the upstream
//! members' pooled client, Vertex AI's token fetches, and the alert webhook. One place decides
//! how TLS is set up (rustls with the bundled webpki roots, HTTP/1.1, plain `http://` allowed
//! for local and test endpoints); only the TCP settings differ per client.

use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use std::time::Duration;

/// The connector type the clients are generic over.
pub type Https = HttpsConnector<HttpConnector>;

/// TCP settings of one client; the default is hyper's (Nagle on, no connect timeout, no
/// keep-alive probes).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tcp {
    /// Disable Nagle's algorithm (small writes go out at once).
    pub nodelay: bool,
    /// How long a TCP connect may take.
    pub connect_timeout: Option<Duration>,
    /// How long a connection is idle before TCP keep-alive probes start.
    pub keepalive: Option<Duration>,
}

/// An HTTPS (or plain HTTP) connector with `tcp`'s settings.
pub fn https(tcp: Tcp) -> Https {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(tcp.nodelay);
    http.set_connect_timeout(tcp.connect_timeout);
    http.set_keepalive(tcp.keepalive);
    hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .wrap_connector(http)
}
