//! Image work off the async runtime. Decoding, drawing and encoding images
//! costs milliseconds to seconds of CPU (a 40 MP mask is 160 MB of pixels);
//! done on a runtime worker, that time is taken from every other call the
//! worker serves. `run` moves it to tokio's blocking pool, and a panic in it
//! (a decoder's bug met by a hostile file) becomes that one call's error:
//! the service unwinds (the workspace's release profile does not abort).

/// Runs `work` on the blocking pool; a panic in it is an error naming `what`.
pub async fn run<T: Send + 'static>(
    what: &'static str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work).await.map_err(|error| {
        let why = match error.try_into_panic() {
            Ok(panic) => panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into()),
            Err(error) => error.to_string(),
        };
        tracing::error!(what, %why, "image work failed inside the gateway");
        format!("{what} failed inside the gateway ({why}); this call was stopped, nothing was stored")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // `#[tokio::test]` runs one thread: work done on it would stop every task.
    #[tokio::test]
    async fn work_runs_beside_the_runtime_which_keeps_serving() {
        let runtime_thread = std::thread::current().id();
        let ran_on = run("noting the thread", || std::thread::current().id()).await.unwrap();
        assert_ne!(ran_on, runtime_thread);
        // The work waits for a message that only this (runtime) task sends:
        // had it taken the runtime's thread, the message could never come.
        let (send, receive) = std::sync::mpsc::channel::<()>();
        let work = tokio::spawn(run("waiting", move || {
            receive.recv_timeout(std::time::Duration::from_secs(20)).is_ok()
        }));
        tokio::task::yield_now().await;
        send.send(()).unwrap();
        assert_eq!(work.await.unwrap(), Ok(true));
    }

    #[tokio::test]
    async fn a_panic_is_the_calls_error_and_nothing_else_stops() {
        let failed = run("drawing the mask", || -> u8 { panic!("decoder bug") }).await;
        let message = failed.unwrap_err();
        assert!(
            message.contains("drawing the mask") && message.contains("decoder bug"),
            "{message}"
        );
        assert_eq!(run("the next call", || 7).await, Ok(7));
    }

    /// The service's release build unwinds, so a panic stays in its call
    /// (`Cargo.toml` is the workspace's; the Wasm filter's build picks abort).
    #[test]
    fn the_release_profile_unwinds() {
        let manifest = include_str!("../../../Cargo.toml");
        let release = manifest
            .split("[profile.release]")
            .nth(1)
            .and_then(|rest| rest.split("\n[").next())
            .unwrap();
        let panic = release
            .lines()
            .map(str::trim)
            .find(|line| line.starts_with("panic"))
            .map(|line| line.replace(' ', ""));
        assert!(
            panic.is_none() || panic.as_deref() == Some("panic=\"unwind\""),
            "{panic:?}"
        );
    }
}
