//! Progress notifications of a running call: `generating` heartbeats that
//! keep clients and proxies from timing a long call out, partial images as
//! a streaming backend announces them, and a waiting call's place in a
//! self-hosted pool's queue.

use std::time::{Duration, Instant};

use rmcp::model::{ProgressNotificationParam, ProgressToken};
use rmcp::service::{Peer, RequestContext};
use rmcp::RoleServer;

use crate::providers::{PartialImage, Report};

/// Progress notifications for one call, when the client asked for them.
pub struct Progress {
    peer: Peer<RoleServer>,
    token: ProgressToken,
    step: f64,
    interval: Duration,
}

impl Progress {
    pub fn for_request(context: &RequestContext<RoleServer>, interval: Duration) -> Option<Progress> {
        let token = context.meta.get_progress_token()?;
        Some(Progress {
            peer: context.peer.clone(),
            token,
            step: 0.0,
            interval,
        })
    }

    /// Sends the next notification; progress only ever increases.
    pub async fn send(&mut self, message: String) {
        self.step += 1.0;
        let param = ProgressNotificationParam::new(self.token.clone(), self.step).with_message(message);
        // Boxed: the notification's future is large and lives only while it
        // is sent, not for the whole call that awaits this one (a waiting call's memory).
        if let Err(error) = Box::pin(self.peer.notify_progress(param)).await {
            tracing::debug!(%error, "progress notification not delivered");
        }
    }
}

fn describe(report: &Report) -> String {
    match report {
        Report::Partial(PartialImage { index }) => format!("partial image {} received", index + 1),
        Report::Queued { model, ahead: 0 } => format!("queued for {model}: next in line"),
        Report::Queued { model, ahead } => format!("queued for {model}: {ahead} calls ahead"),
    }
}

/// Sends `generating` heartbeats every `progress.interval` until `work` ends,
/// so clients and proxies keep a long call alive.
/// Also reports partial images as a streaming backend announces them.
pub async fn with_heartbeats<T>(
    progress: &mut Option<Progress>,
    mut partials: Option<tokio::sync::mpsc::UnboundedReceiver<Report>>,
    work: impl std::future::Future<Output = T>,
) -> T {
    // Pinned where it lies, so the wait holds `work` once (awaiting it by
    // value kept a second copy in the caller's future while calls wait).
    tokio::pin!(work);
    let Some(progress) = progress.as_mut() else {
        return work.await;
    };
    let started = Instant::now();
    let mut ticker = tokio::time::interval(progress.interval);
    ticker.tick().await;
    loop {
        tokio::select! {
            output = &mut work => return output,
            _ = ticker.tick() => {
                progress.send(format!("generating ({} s)", started.elapsed().as_secs())).await;
            }
            Some(report) = async { match partials.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                progress.send(describe(&report)).await;
            }
        }
    }
}
