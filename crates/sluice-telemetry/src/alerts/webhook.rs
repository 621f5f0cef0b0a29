//! The alert webhook: one sender task POSTs each notification as JSON, retrying a failed POST
//! with exponential backoff, so a slow or failing webhook delays only later notifications.

use super::Notification;
use crate::Sources;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use sluice_config::AlertsConfig;
use sluice_upstream::connector;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// Longest wait between two attempts of one POST.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// A notification on its way to the webhook, with the settings in force when it was made.
pub(super) struct Delivery {
    pub(super) note: Notification,
    url: Option<String>,
    attempts: u32,
    backoff: Duration,
    timeout: Duration,
}

impl Delivery {
    pub(super) fn new(note: Notification, a: &AlertsConfig) -> Self {
        Self {
            note,
            url: a.webhook_url.clone(),
            attempts: a.webhook_attempts.max(1),
            backoff: Duration::from_millis(a.webhook_backoff_ms),
            timeout: Duration::from_millis(a.webhook_timeout_ms.max(1)),
        }
    }
}

/// Why one POST failed.
#[derive(Debug, thiserror::Error)]
enum WebhookError {
    #[error("invalid webhook request: {0}")]
    Request(#[from] http::Error),
    #[error("webhook unreachable: {0}")]
    Send(#[from] hyper_util::client::legacy::Error),
    #[error("webhook answered {0}")]
    Status(http::StatusCode),
    #[error("webhook timed out")]
    Timeout,
}

type WebhookClient = Client<connector::Https, Full<Bytes>>;

pub(super) async fn deliver<S: Sources>(mut rx: mpsc::Receiver<Delivery>, state: S) {
    let https = connector::https(connector::Tcp::default());
    let client: WebhookClient = Client::builder(TokioExecutor::new()).build(https);
    let client = Arc::new(client);
    while let Some(d) = rx.recv().await {
        let Some(url) = d.url.as_deref() else {
            continue;
        };
        let body = match serde_json::to_vec(&d.note) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(target: "sluice::alert", error = %e, "cannot encode an alert");
                continue;
            }
        };
        let mut wait = d.backoff;
        let mut result = "failed";
        for attempt in 1..=d.attempts {
            match post(&client, url, body.clone(), d.timeout).await {
                Ok(()) => {
                    result = "delivered";
                    break;
                }
                Err(e) if attempt < d.attempts => {
                    tracing::warn!(
                        target: "sluice::alert",
                        alert = d.note.alert,
                        attempt,
                        error = %e,
                        retry_in_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX),
                        "alert webhook failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(MAX_BACKOFF);
                }
                Err(e) => {
                    tracing::error!(
                        target: "sluice::alert",
                        alert = d.note.alert,
                        attempts = d.attempts,
                        error = %e,
                        "alert webhook failed; giving up on this notification"
                    );
                }
            }
        }
        state.metrics().alert_notification(d.note.state, result);
    }
}

async fn post(
    client: &WebhookClient,
    url: &str,
    body: Bytes,
    timeout: Duration,
) -> Result<(), WebhookError> {
    let req = http::Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::USER_AGENT, "sluice-alerts")
        .body(Full::new(body))?;
    let exchange = async {
        let resp = client.request(req).await?;
        let status = resp.status();
        // Read the (small) reply so the connection can be reused.
        let _ = resp.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(WebhookError::Status(status))
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| WebhookError::Timeout)?
}
