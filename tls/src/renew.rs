//! A platform service's own certificate (the routers' `*.<domain>`, the
//! controller's; the bootstrap issued them) renewed before it expires, without
//! a restart: two thirds into its life a new one with the same names and the
//! same life is asked of `issue` (the service's host agent, `POST
//! /cluster/tls/issue`: the CA's key stays on the hosts) and handed to
//! `install`, which swaps it under the listener.

use std::future::Future;
use std::time::{Duration, SystemTime};

use crate::HostCert;

/// A refused or failed renewal is tried again after this (or sooner, for a
/// short-lived certificate).
const RETRY: Duration = Duration::from_secs(30);

/// How often a certificate of this life is looked at: a twentieth of its life,
/// between 1 s and a minute.
fn check_every(cert: &HostCert) -> Duration {
    let life = cert
        .not_after
        .duration_since(cert.not_before)
        .unwrap_or_default();
    (life / 20).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

/// The life to ask for: the current one, within what the agent issues
/// (a minute to a year; a long certificate's life includes its clock-skew margin).
fn life_of(cert: &HostCert) -> Duration {
    cert.not_after
        .duration_since(cert.not_before)
        .unwrap_or_default()
        .clamp(
            Duration::from_secs(60),
            Duration::from_secs(365 * 24 * 3600),
        )
}

/// Renews the certificate `chain_pem`/`key_pem` (as [`crate::Ca::issue`] makes
/// them) through `issue` (names, life → chain and key, PEM), giving each new
/// one to `install` (chain, key), until the task is dropped. `what` names it
/// in the log.
pub async fn renew_through<F, Fut, I>(
    what: &str,
    chain_pem: String,
    key_pem: String,
    issue: F,
    install: I,
) where
    F: Fn(Vec<String>, Duration) -> Fut,
    Fut: Future<Output = Result<(String, String), String>>,
    I: Fn(&str, &str) -> Result<(), String>,
{
    let Some(mut current) = crate::parse_cert(&chain_pem, &key_pem) else {
        tracing::warn!(
            what,
            "the certificate cannot be read: it will not be renewed"
        );
        return;
    };
    loop {
        tokio::time::sleep(check_every(&current)).await;
        if !crate::renewal_due(&current) {
            continue;
        }
        let renewed = issue(current.names.clone(), life_of(&current))
            .await
            .and_then(|(chain, key)| {
                let parsed = crate::parse_cert(&chain, &key)
                    .ok_or_else(|| "the certificate issued cannot be read".to_string())?;
                install(&chain, &key)?;
                Ok(parsed)
            });
        match renewed {
            Ok(parsed) => {
                let left = parsed
                    .not_after
                    .duration_since(SystemTime::now())
                    .unwrap_or_default();
                tracing::info!(
                    what,
                    names = ?parsed.names,
                    valid_for_secs = left.as_secs(),
                    "renewed the certificate"
                );
                current = parsed;
            }
            Err(e) => {
                let expired = current.not_after <= SystemTime::now();
                tracing::warn!(what, error = %e, expired, "renewing the certificate");
                tokio::time::sleep(RETRY.min(check_every(&current) * 5)).await;
            }
        }
    }
}
